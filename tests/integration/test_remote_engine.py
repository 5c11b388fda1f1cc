"""A Docker engine reached over tcp:// with TLS, as a real arm64 server would be: here the
local engine behind a TLS endpoint that demands a client certificate (a small proxy to
its socket), with certificates made for the test. The engine's certificate must verify
against the configured CA; a wrong CA or a missing client certificate is refused."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.inventory import Host
from orchestrator.transports.docker import DockerTransport
from orchestrator.images import on_demand

DOCKER_SOCKET = "/var/run/docker.sock"

#: builds a missing build image on first use, as the CLI does
IMAGES = on_demand(lambda line: None)


def _certificate(name: str, key, issuer_name: str, issuer_key, ca: bool, ip: str | None = None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert, key) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for ca_name in ("ca", "other-ca"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
        files[ca_name], _ = _write(tmp_path, ca_name, ca_cert, ca_key)
        if ca_name == "ca":
            for role, ip in (("server", "127.0.0.1"), ("client", None)):
                key = ec.generate_private_key(ec.SECP256R1())
                files[role], files[f"{role}-key"] = _write(tmp_path, role, _certificate(role, key, "ca", ca_key,
                                                                                        ca=False, ip=ip), key)
    return files


@pytest.fixture
def tls_engine(pki, docker_client) -> int:
    """127.0.0.1:PORT speaking TLS (client certificate required) to the local engine."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server"], pki["server-key"])
    context.load_verify_locations(pki["ca"])
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def pipe(source: socket.socket, dest: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                dest.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, dest):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                secure = context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            engine = socket.socket(socket.AF_UNIX)
            engine.connect(DOCKER_SOCKET)
            threading.Thread(target=pipe, args=(secure, engine), daemon=True).start()
            threading.Thread(target=pipe, args=(engine, secure), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def assert_builds_through(engine: DockerTransport) -> None:
    """The engine passes the preflight and runs a command in a build container."""
    status = engine.probe("linux-x86_64")
    assert status.reachable, status.detail
    with engine.open("linux-x86_64", {"org.modelpack.run": f"remote-{os.getpid()}"}) as ws:
        lines: list[str] = []
        assert ws.run(["python", "-c", "print('through', 'the', 'engine')"], {}, 60, lines.append) == 0
        assert lines == ["through the engine"]


def remote(port: int, **tls) -> DockerTransport:
    return DockerTransport(Host(name="remote", transport="docker", targets=["linux-x86_64"],
                                docker_host=f"tcp://127.0.0.1:{port}", **{k: str(v) for k, v in tls.items()}), IMAGES)


@pytest.mark.skipif(not os.path.exists(DOCKER_SOCKET), reason="needs the engine's unix socket to put TLS in front")
def test_tls_engine_builds_only_with_the_right_ca_and_a_client_certificate(pki, tls_engine):
    assert_builds_through(remote(tls_engine, tls_ca=pki["ca"], tls_cert=pki["client"], tls_key=pki["client-key"]))
    wrong_ca = remote(tls_engine, tls_ca=pki["other-ca"], tls_cert=pki["client"], tls_key=pki["client-key"])
    refused = wrong_ca.probe("linux-x86_64")
    assert not refused.reachable and "CERTIFICATE_VERIFY_FAILED" in refused.detail.upper().replace(" ", "_")
    no_client_cert = remote(tls_engine, tls_ca=pki["ca"])
    assert not no_client_cert.probe("linux-x86_64").reachable


@pytest.fixture
def sshd_with_docker(docker_client, client_key):
    """An sshd host whose `docker` CLI talks to the local engine: what an arm64 build
    server reached as docker_host: ssh://user@host looks like."""
    import shutil

    cli = shutil.which("docker")
    if cli is None or not os.path.exists(DOCKER_SOCKET):
        pytest.skip("needs the docker CLI and the engine's unix socket on this machine")
    from tests.integration.conftest import start_sshd

    files = {"/usr/local/bin/docker": (Path(cli).read_bytes(), 0o755)}
    yield from start_sshd(docker_client, client_key, files=files,
                          volumes={DOCKER_SOCKET: {"bind": "/var/run/docker.sock", "mode": "rw"}})


def test_ssh_engine_needs_a_known_host_key(sshd_with_docker, client_key, tmp_path, monkeypatch):
    """docker_host: ssh://... goes through docker-py's paramiko client: ~/.ssh/config gives
    the key, ~/.ssh/known_hosts must hold the host key, and an unknown key is refused."""
    address, host_key, _, _ = sshd_with_docker
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(f"Host {address}\n  IdentityFile {client_key[0]}\n  User root\n")
    (home / ".ssh" / "known_hosts").write_text("")
    monkeypatch.setenv("HOME", str(home))

    def engine() -> DockerTransport:
        return DockerTransport(Host(name="arm-box", transport="docker", targets=["linux-x86_64"],
                                    docker_host=f"ssh://root@{address}"), IMAGES)

    unknown = engine().probe("linux-x86_64")
    assert not unknown.reachable and "not found in known_hosts" in unknown.detail
    (home / ".ssh" / "known_hosts").write_text(f"{address} {host_key}\n")
    assert_builds_through(engine())
