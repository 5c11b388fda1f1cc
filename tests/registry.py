"""A real OCI registry for the publish tests: Debian's ``docker-registry`` (the reference
distribution server) started on loopback with its storage in a test folder, optionally
with basic auth (a bcrypt htpasswd file, as the server requires) and TLS (a self-signed
certificate the tests hand to ``--ca-file``)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SERVER = "docker-registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key; the certificate is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelpack test registry")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "registry.crt", folder / "registry.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Registry:
    folder: Path
    port: int
    user: tuple[str, str] | None = None
    tls: bool = False
    readonly: bool = False
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.folder / "storage"

    @property
    def ca(self) -> Path:
        return self.folder / "registry.crt"

    def access(self) -> list[str]:
        """The modelpack options that reach this registry."""
        options = ["--ca-file", str(self.ca)] if self.tls else ["--plain-http"]
        return options + (["--username", self.user[0]] if self.user else [])

    def start(self) -> "Registry":
        config: dict = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                        "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
                        "http": {"addr": self.host}}
        if self.readonly:
            config["storage"]["maintenance"] = {"readonly": {"enabled": True}}
        if self.user:
            import bcrypt

            hashed = bcrypt.hashpw(self.user[1].encode(), bcrypt.gensalt(rounds=4)).decode()
            (self.folder / "htpasswd").write_text(f"{self.user[0]}:{hashed}\n")
            config["auth"] = {"htpasswd": {"realm": "modelpack-test", "path": str(self.folder / "htpasswd")}}
        if self.tls:
            if not self.ca.exists():
                self_signed(self.folder)
            config["http"]["tls"] = {"certificate": str(self.ca), "key": str(self.folder / "registry.key")}
        (self.folder / "config.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen([shutil.which(SERVER) or SERVER, "serve", str(self.folder / "config.yml")],
                                        stdout=subprocess.DEVNULL, stderr=(self.folder / "registry.log").open("ab"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{SERVER} exited: {(self.folder / 'registry.log').read_text()[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"{SERVER} did not listen on {self.host}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    # -- the registry's own HTTP API, read without modelpack --------------------------
    def get(self, path: str, accept: str = "application/vnd.oci.image.manifest.v1+json") -> tuple[int, bytes, dict]:
        import base64
        import ssl

        request = urllib.request.Request(f"{'https' if self.tls else 'http'}://{self.host}/v2/{path}",
                                         headers={"Accept": accept})
        if self.user:
            token = base64.b64encode(f"{self.user[0]}:{self.user[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=str(self.ca)) if self.tls else None
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)


class KillingProxy:
    """A TCP proxy on loopback in front of a registry that kills the registry (SIGKILL)
    and drops every connection as soon as ``rule(bytes_sent, manifest_puts)`` holds for
    what the client has sent: a registry dying at an exact point of a push."""

    _MANIFEST_PUT = re.compile(rb"PUT /v2/\S*/manifests/")

    def __init__(self, registry: Registry, rule) -> None:
        import threading

        self.registry, self.rule = registry, rule
        self.sent = self.manifest_puts = 0
        self.fired = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.fired.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.registry.port))
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(16384):
                if from_client:
                    self.sent += len(data)
                    self.manifest_puts += len(self._MANIFEST_PUT.findall(data))
                    if not self.fired.is_set() and self.rule(self.sent, self.manifest_puts):
                        self.fired.set()
                        self.registry.kill()
                        self.close()
                        return
                dest.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, dest):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
