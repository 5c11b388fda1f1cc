"""The SSH transport against real OpenSSH servers in containers on a private Docker
network, each with its own address: host-key verification, a full build, exact
arguments, large output, and a host that drops off the network mid-transfer."""

from __future__ import annotations

import os
import tarfile
import threading
import time

import paramiko
import pytest

from orchestrator.cli import main
from orchestrator.transports.base import TransportError
from orchestrator.transports.ssh import SshTransport
from tests.integration.conftest import PYTHON, ssh_host
from tests.models import REPO


def test_build_and_verify_over_ssh(capsys, sshd, client_key, tmp_path):
    address, host_key, _, _ = sshd
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(f"hosts:\n  - name: sshbox\n    transport: ssh\n    address: {address}\n    user: root\n"
                     f"    key: {client_key[0]}\n    host_key: \"{host_key}\"\n    python: {PYTHON}\n"
                     f"    targets: [linux-x86_64]\n    known_hosts: {tmp_path / 'none'}\n")
    spec = REPO / "examples" / "tinycnn" / "modelpack.yaml"
    assert main(["build", str(spec), "--hosts", str(hosts), "--out", str(tmp_path / "d"), "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "built   tinycnn/linux-x86_64" in out
    package = tmp_path / "d" / "tinycnn-1.0.0-linux-x86_64.tar.gz"
    with tarfile.open(package) as tar:
        import json

        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest["provenance"]["transport"] == "ssh" and manifest["provenance"]["address"] == address
    assert main(["verify", str(package), "--hosts", str(hosts)]) == 0
    assert "self-test passed on sshbox" in capsys.readouterr().out


def test_unknown_host_key_is_refused_with_its_fingerprint(sshd, client_key, tmp_path):
    address, host_key, _, _ = sshd
    transport = SshTransport(ssh_host(address, client_key[0], None, known_hosts=str(tmp_path / "empty")))
    status = transport.probe("linux-x86_64")
    assert not status.reachable
    assert "unknown SSH host key ssh-ed25519 SHA256:" in status.detail and "host_key:" in status.detail


def test_changed_host_key_is_refused_loudly(sshd, client_key, tmp_path):
    address, _, _, _ = sshd
    known = tmp_path / "known_hosts"
    known.write_text(f"{address} ssh-ed25519 {_other_ed25519()}\n")
    status = SshTransport(ssh_host(address, client_key[0], None, known_hosts=str(known))).probe("linux-x86_64")
    assert not status.reachable and "HOST KEY HAS CHANGED" in status.detail


def _other_ed25519() -> str:
    """A syntactically valid ed25519 public key that is not the server's."""
    import base64
    import struct

    def field(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    return base64.b64encode(field(b"ssh-ed25519") + field(bytes(range(32)))).decode()


def test_arguments_arrive_exact_and_large_output_does_not_deadlock(sshd, client_key):
    address, host_key, _, _ = sshd
    transport = SshTransport(ssh_host(address, client_key[0], host_key))
    with transport.open("linux-x86_64", {}) as ws:
        nasty = "it's \"q\" $HOME `id` ; %PATH% & | > \n é ✓"
        lines: list[str] = []
        assert ws.run([PYTHON, "-c", "import sys; sys.stdout.write(repr(sys.argv[1]))", nasty], {"K": "$(id)"},
                      60, lines.append) == 0
        assert lines == [repr(nasty)]
        count = [0]
        code = ws.run([PYTHON, "-c", "import sys\nfor i in range(200000): print('y' * 60, i)\n"
                       "sys.stderr.write('err\\n' * 1000)"], {}, 120, lambda line: count.__setitem__(0, count[0] + 1))
        assert code == 0 and count[0] == 201000  # 12 MB of stdout plus stderr, interleaved
        root = ws.root
    status = transport.execute(f"test -e {root}", timeout=30)[0]
    assert status == 1, "the work directory is removed on close"


def test_host_that_hangs_mid_upload_is_detected_within_the_liveness_timeout(sshd, client_key, tmp_path):
    """A frozen host keeps its TCP stack up: the upload blocks on a zero window rather than
    failing, and only modelpack's own liveness check can end it."""
    address, host_key, container, _ = sshd
    transport = SshTransport(ssh_host(address, client_key[0], host_key), liveness_timeout=3.0)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(96 << 20))
    ws = transport.open("linux-x86_64", {})
    freeze = threading.Timer(0.3, container.pause)
    started = time.monotonic()
    freeze.start()
    try:
        with pytest.raises(TransportError):
            ws.push({"big.bin": big})
        assert time.monotonic() - started < 30, "must fail within the liveness timeout, not hang"
    finally:
        freeze.join()
        container.unpause()
    ws.close()
    assert transport.execute("true", timeout=30)[0] == 0, "the next command reconnects to the recovered host"


def test_host_dropping_off_the_network_mid_transfer_is_an_infrastructure_failure(sshd, client_key, tmp_path):
    address, host_key, container, network = sshd
    transport = SshTransport(ssh_host(address, client_key[0], host_key), liveness_timeout=3.0)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(96 << 20))
    ws = transport.open("linux-x86_64", {})
    cut = threading.Timer(0.5, lambda: network.disconnect(container, force=True))
    started = time.monotonic()
    cut.start()
    with pytest.raises(TransportError):  # (the last test here: the host stays cut off)
        ws.push({"big.bin": big})
    assert time.monotonic() - started < 30, "must fail within the liveness timeout, not hang"
    cut.join()
