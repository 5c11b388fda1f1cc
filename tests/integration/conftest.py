"""Shared fixtures for integration tests: real OpenSSH servers in containers."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import time
from pathlib import Path

import paramiko
import pytest

from orchestrator.images import image_tag
from orchestrator.inventory import Host

PYTHON = "/opt/modelpack/venv/bin/python"


@pytest.fixture(scope="module")
def client_key(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("ssh-client")
    key = paramiko.RSAKey.generate(2048)
    path = folder / "id_rsa"
    key.write_private_key_file(str(path))
    return path, f"{key.get_name()} {key.get_base64()}"


@pytest.fixture(scope="module")
def sshd(docker_client_module, client_key):
    """A running sshd container on its own network; yields (address, pinned host key, container, network)."""
    yield from start_sshd(docker_client_module, client_key)


def start_sshd(client, client_key, files: dict[str, tuple[bytes, int]] | None = None, environment: str = "sshd-test",
               **create):
    """Run an sshd container of ``environment``'s image (authorised for ``client_key``,
    with extra ``files`` as {path: (bytes, mode)}) on a private network; yields
    (address, pinned host key, container, network), and removes both afterwards."""
    try:
        image = image_tag(environment)
        client.images.get(image)
    except Exception as exc:  # built by scripts/build-images
        pytest.fail(f"{environment} test image missing ({exc}); run scripts/build-images")
    network = client.networks.create(f"modelpack-ssh-{os.getpid()}-{time.monotonic_ns()}", driver="bridge",
                                      labels={"org.modelpack.test": "1"})
    container = client.containers.create(image, labels={"org.modelpack.test": "1"}, network=network.name, **create)
    try:
        address, host_key = launch_sshd(container, network, client_key[1], files)
        yield address, host_key, container, network
    finally:
        container.remove(force=True)
        network.remove()


def launch_sshd(container, network, authorized_key: str, files: dict[str, tuple[bytes, int]] | None = None,
                wait: float = 30) -> tuple[str, str]:
    """Start a created sshd container on ``network`` with ``authorized_key`` for root
    (and extra ``files``); returns its address and the host key to pin, once it answers."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for path, (blob, mode) in {"etc/ssh/authorized/root": ((authorized_key + "\n").encode(), 0o600),
                                   **(files or {})}.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(blob), mode
            tar.addfile(info, io.BytesIO(blob))
    container.put_archive("/", data.getvalue())
    container.start()
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        code, out = container.exec_run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
        if code == 0:
            try:
                socket.create_connection((address, 22), timeout=1).close()
                return address, " ".join(out.decode().split()[:2])
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError("sshd did not come up")


@pytest.fixture(scope="module")
def docker_client_module():
    import docker

    client = docker.from_env(timeout=30)
    client.ping()
    return client


def ssh_host(address: str, key: Path, host_key: str | None, **extra) -> Host:
    return Host(name="sshbox", transport="ssh", targets=["linux-x86_64"], address=address, user="root",
                key=str(key), python=PYTHON, **({"host_key": host_key} if host_key else {}), **extra)




def make_wheel(folder: Path, name: str, version: str, source: str) -> Path:
    """A minimal pure-Python wheel (one module) that pip installs offline."""
    import base64
    import hashlib
    import zipfile

    files = {
        f"{name}.py": source.encode(),
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: modelpack-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join(record + [f"{name}-{version}.dist-info/RECORD,,"]) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)
    return path
