"""The SSH transport against real OpenSSH servers in containers on a private Docker
network, each with its own address: host-key verification, a full build, exact
arguments, large output, and a host that drops off the network mid-transfer."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.inventory import Host, load_inventory
from orchestrator.transports.base import TransportError
from orchestrator.transports.ssh import SshTransport
from tests.conftest import two_controllers_take_turns, two_jobs_take_turns
from tests.integration.conftest import PYTHON, make_wheel, ssh_host
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


def sshbox_hosts(sshd, client_key, tmp_path: Path, slots: int) -> Path:
    """An inventory of the test sshd container alone, with ``slots``."""
    address, host_key, _, _ = sshd
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(f"hosts:\n  - name: sshbox\n    transport: ssh\n    address: {address}\n    user: root\n"
                     f"    key: {client_key[0]}\n    host_key: \"{host_key}\"\n    python: {PYTHON}\n"
                     f"    targets: [linux-x86_64]\n    slots: {slots}\n")
    return hosts


def test_two_selection_jobs_on_a_two_slot_ssh_host_take_turns_benchmarking_the_other_stopped(
        sshd, client_key, write_spec, tmp_path):
    """The host's lease is a folder its workdir holds for one controller at a time, and
    the other job's packager is SIGSTOPped (its process group, proven ours) meanwhile."""
    two_jobs_take_turns(write_spec, tmp_path, sshbox_hosts(sshd, client_key, tmp_path, slots=2))


def test_two_controllers_on_one_ssh_host_take_turns_and_stop_each_others_packagers(
        sshd, client_key, write_spec, tmp_path):
    """Two `modelpack build` processes share one SSH host: its lease folder makes them time
    one at a time, and the first to time SIGSTOPs the other controller's packager (found
    by the record its supervisor left in the workdir, proven to be a live supervisor of
    that workspace), resumed after; the lease and the record of what was stopped are gone."""
    hosts = sshbox_hosts(sshd, client_key, tmp_path, slots=1)
    two_controllers_take_turns(write_spec, tmp_path, hosts)
    transport = SshTransport(load_inventory(hosts).hosts[0])
    code, output = transport.execute("ls ~/.modelpack", timeout=30)
    assert "benchmark.lease" not in output.decode(), output


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


def test_a_silent_command_ends_with_its_workspace_lifetime_on_the_host(sshd, client_key):
    # what a controller killed outright leaves: a packager that prints nothing for a long
    # compile never meets a closed pipe, so the host must end it by itself
    address, host_key, container, _ = sshd
    transport = SshTransport(ssh_host(address, client_key[0], host_key))
    with transport.open("linux-x86_64", {}, lifetime=3.0) as ws:
        started = time.monotonic()
        code = ws.run(["sh", "-c", "sleep 120 & sleep 121; echo never"], {}, 60, lambda line: None)
        elapsed = time.monotonic() - started
    assert code != 0 and elapsed < 15, (code, elapsed)
    left = container.exec_run(["sh", "-c", "pgrep -f 'sleep 12[01]' || true"]).output.split()
    assert left == [], "the command and what it started are gone"


def test_uploads_are_content_addressed_so_unchanged_files_are_not_sent_again(sshd, client_key, tmp_path):
    address, host_key, container, _ = sshd
    transport = SshTransport(ssh_host(address, client_key[0], host_key))
    model, code = tmp_path / "model.onnx", tmp_path / "code.py"
    model.write_bytes(os.urandom(5 << 20))
    code.write_bytes(b"print('v1')\n")
    files = {"in/model.onnx": model, "orchestrator/code.py": code}
    with transport.open("linux-x86_64", {}) as first:
        first.push(files)
        assert first.sent_bytes == model.stat().st_size + code.stat().st_size
    with transport.open("linux-x86_64", {}) as second:
        second.push(files)
        assert second.sent_bytes == 0, "everything was on the host already"
        got = container.exec_run(["sha256sum", f"{second.root}/in/model.onnx"]).output.split()[0].decode()
        assert got == hashlib.sha256(model.read_bytes()).hexdigest()
    code.write_bytes(b"print('v2')\n")
    with transport.open("linux-x86_64", {}) as third:
        third.push(files)
        assert third.sent_bytes == code.stat().st_size, "only the changed file travels"
        assert container.exec_run(["cat", f"{third.root}/orchestrator/code.py"]).output == b"print('v2')\n"


def test_build_keep_leaves_the_workspace_until_its_lease_expires_and_hosts_clean_removes_it(
        capsys, sshd, client_key, tmp_path):
    address, host_key, container, _ = sshd
    hosts = tmp_path / "hosts.yaml"
    entry = (f"transport: ssh, address: {address}, user: root, key: {client_key[0]}, host_key: \"{host_key}\","
             f" python: {PYTHON}, targets: [linux-x86_64], workdir: /root/lease-test")
    hosts.write_text(f"hosts:\n  - {{name: short, lease_ttl: 3, {entry}}}\n")
    spec = REPO / "examples" / "tinycnn" / "modelpack.yaml"
    assert main(["build", str(spec), "--hosts", str(hosts), "--out", str(tmp_path / "d"), "--no-cache", "--keep"]) == 0
    kept = container.exec_run(["sh", "-c", "ls -d /root/lease-test/runs/*"]).output.decode().split()
    assert len(kept) == 1
    assert container.exec_run(["sh", "-c", f"ls {kept[0]}/out/*.tar.gz"]).exit_code == 0, "the work is there to inspect"
    # a long-leased workspace of another run stays
    other = SshTransport(Host(**{**ssh_host(address, client_key[0], host_key).model_dump(exclude_unset=True),
                                  "workdir": "/root/lease-test", "lease_ttl": 3600}))
    other.keep_workspaces = True
    with other.open("linux-x86_64", {}) as live:
        pass
    capsys.readouterr()
    assert main(["hosts", "clean", "--hosts", str(hosts)]) == 0
    assert "removed 0" in capsys.readouterr().out, "nothing has expired yet"
    time.sleep(3.5)
    assert main(["hosts", "clean", "--hosts", str(hosts)]) == 0
    out = capsys.readouterr().out
    assert "removed 1" in out and kept[0].rsplit("/", 1)[1] in out
    left = container.exec_run(["sh", "-c", "ls -d /root/lease-test/runs/*"]).output.decode().split()
    assert left == [str(live.root)]


def test_bootstrap_reuses_the_environment_and_rebuilds_it_when_the_wheelhouse_changes(
        capsys, sshd, client_key, tmp_path):
    address, host_key, container, _ = sshd
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(f"hosts:\n  - {{name: boot, transport: ssh, address: {address}, user: root,"
                     f" key: {client_key[0]}, host_key: \"{host_key}\", python: /usr/bin/python3,"
                     f" targets: [linux-x86_64], workdir: /root/boot-test}}\n")
    house = tmp_path / "wheels"
    house.mkdir()
    make_wheel(house, "alpha", "1.0", "VALUE = 'alpha one'\n")

    def env_python(expression: str) -> str:
        transport = SshTransport(load_inventory(hosts).hosts[0])
        command = transport.shell().command([transport.packager_python(), "-c", f"import alpha, sys; print({expression})"])
        code, out = transport.execute(command, 60)
        assert code == 0, out
        return out.decode().strip()

    assert main(["hosts", "bootstrap", "boot", "--hosts", str(hosts), "--wheelhouse", str(house)]) == 0
    first = capsys.readouterr().out
    assert "created" in first and "1 wheels" in first
    assert env_python("alpha.VALUE") == "alpha one"
    first_python = env_python("sys.executable")

    started = time.monotonic()
    assert main(["hosts", "bootstrap", "boot", "--hosts", str(hosts), "--wheelhouse", str(house)]) == 0
    assert "reused" in capsys.readouterr().out and time.monotonic() - started < 15
    assert env_python("sys.executable") == first_python

    make_wheel(house, "beta", "2.0", "VALUE = 'beta two'\n")
    assert main(["hosts", "bootstrap", "boot", "--hosts", str(hosts), "--wheelhouse", str(house)]) == 0
    second = capsys.readouterr().out
    assert "created" in second and "2 wheels" in second
    assert env_python("__import__('beta').VALUE") == "beta two"
    assert env_python("sys.executable") != first_python
    envs = container.exec_run(["sh", "-c", "ls /root/boot-test/envs"]).output.decode().split()
    assert len(envs) == 3 and "current" in envs, f"the replaced environment stays for running builds: {envs}"
    make_wheel(house, "gamma", "3.0", "VALUE = 'gamma three'\n")
    assert main(["hosts", "bootstrap", "boot", "--hosts", str(hosts), "--wheelhouse", str(house)]) == 0
    assert "created" in capsys.readouterr().out
    envs = container.exec_run(["sh", "-c", "ls /root/boot-test/envs"]).output.decode().split()
    assert len(envs) == 3, f"only the current and the previous environment are kept: {envs}"
    assert env_python("__import__('gamma').VALUE") == "gamma three"


def test_a_host_with_only_python_is_bootstrapped_with_the_pinned_engines_and_builds(capsys, sshd, client_key, tmp_path):
    """The real flow: wheels for the host's platform and Python downloaded here from the
    pins in images/, pushed, installed into a venv there; the build then runs in it."""
    address, host_key, _, _ = sshd
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(f"hosts:\n  - {{name: bare, transport: ssh, address: {address}, user: root,"
                     f" key: {client_key[0]}, host_key: \"{host_key}\", python: /usr/bin/python3,"
                     f" targets: [linux-x86_64], workdir: /root/bare-host}}\n")
    assert main(["hosts", "check", "--hosts", str(hosts)]) == 1
    assert "hosts bootstrap bare" in capsys.readouterr().out, "the failed check says what to do"
    assert main(["hosts", "bootstrap", "bare", "--hosts", str(hosts)]) == 0
    assert "created" in capsys.readouterr().out
    spec = REPO / "examples" / "tinycnn" / "modelpack.yaml"
    assert main(["build", str(spec), "--hosts", str(hosts), "--out", str(tmp_path / "d"), "--no-cache"]) == 0
    with tarfile.open(tmp_path / "d" / "tinycnn-1.0.0-linux-x86_64.tar.gz") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    facts = SshTransport(load_inventory(hosts).hosts[0]).facts()
    assert manifest["provenance"]["environment_hash"] == facts["env_hash"]
    pins = dict(line.split("==") for line in (REPO / "images" / "linux-x86_64" / "requirements.txt").read_text().split()
                if "==" in line)
    toolchain = manifest["provenance"]["build_platform"]["toolchain"]
    assert toolchain["onnxruntime"] == pins["onnxruntime"] and toolchain["numpy"] == pins["numpy"]
    # the environment records the wheels it was made from (for provenance and BOM): the
    # very files pushed from this machine's wheelhouse
    from orchestrator.bootstrap import wheelhouse_for

    pushed = {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in wheelhouse_for(facts).glob("*.whl")}
    assert manifest["provenance"]["build_platform"]["wheels"] == pushed
    assert any(name.startswith(f"onnxruntime-{pins['onnxruntime']}-") for name in pushed)


def test_host_that_hangs_mid_upload_is_detected_within_the_liveness_timeout(sshd, client_key, tmp_path):
    """A frozen host keeps its TCP stack up: the upload blocks on a zero window rather than
    failing, and only modelpack's own liveness check can end it. Once the host is back,
    the next upload resumes where the broken one stopped."""
    address, host_key, container, _ = sshd
    transport = SshTransport(ssh_host(address, client_key[0], host_key), liveness_timeout=3.0)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(96 << 20))
    ws = transport.open("linux-x86_64", {})

    def freeze_mid_upload() -> None:
        # once part of the file is on its way, whatever the link's speed: a fixed delay
        # let a fast machine finish the upload before the host froze
        deadline = time.monotonic() + 60
        while ws.sent_bytes < (8 << 20) and time.monotonic() < deadline:
            time.sleep(0.001)
        container.pause()

    freeze = threading.Thread(target=freeze_mid_upload)
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
    # the host kept what arrived before the freeze; the next upload sends only the rest
    part = f"/root/.modelpack/blobs/{hashlib.sha256(big.read_bytes()).hexdigest()}.part"
    deadline = time.monotonic() + 30
    while container.exec_run(["test", "-s", part]).exit_code != 0:
        assert time.monotonic() < deadline, "the broken upload left no resumable part"
        time.sleep(0.2)
    with transport.open("linux-x86_64", {}) as again:
        again.push({"big.bin": big})
        assert 0 < again.sent_bytes < big.stat().st_size, f"resumed, not resent: {again.sent_bytes} bytes"
        got = container.exec_run(["sha256sum", f"{again.root}/big.bin"]).output.split()[0].decode()
        assert got == hashlib.sha256(big.read_bytes()).hexdigest()


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
