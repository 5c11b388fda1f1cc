"""Nightly-matrix behaviour with fault injection against real hosts: a build host that
drops off the network mid-job, a host that is down at start, and the output folder
watched for partial files."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from orchestrator.cli import main
from tests.conftest import spawn_modelpack
from tests.integration.conftest import PYTHON
from tests.models import REPO

SPEC = REPO / "examples" / "tinycnn" / "modelpack.yaml"


@pytest.mark.parametrize("signum, expected", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_during_an_ssh_build_leaves_no_remote_work_directory(sshd, client_key, tmp_path, signum, expected):
    address, host_key, container, _ = sshd
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(
        "hosts:\n"
        f"  - {{name: ssh, transport: ssh, address: {address}, user: root, key: {client_key[0]},"
        f" host_key: \"{host_key}\", python: {PYTHON}, targets: [linux-x86_64]}}\n")
    proc = spawn_modelpack("build", str(SPEC), "--out", str(tmp_path / "out"), "--hosts", str(hosts), "--no-cache",
                           "--verbose", cwd=REPO)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "stage=package: " in line:
            break
    remote = container.exec_run(["sh", "-c", "ls -d /root/.modelpack/runs/* 2>/dev/null"]).output.split()
    assert remote, "a remote work directory should exist while the packager runs: " + "".join(seen)
    started = time.monotonic()
    proc.send_signal(signum)
    code = proc.wait(timeout=15)
    assert code == expected, "".join(seen) + proc.stdout.read()
    assert time.monotonic() - started < 10
    running = container.exec_run(["sh", "-c", "pgrep -f [o]rchestrator.packager || true"]).output.split()
    assert running == [], "the remote packager and its workers must be stopped"
    left = container.exec_run(["sh", "-c", "ls -d /root/.modelpack/runs/* 2>/dev/null"]).output.split()
    assert left == [], f"remote work directories left behind: {left}"


def test_ssh_host_cut_off_mid_job_is_retried_on_another_host(capsys, sshd, client_key, docker_client, tmp_path):
    address, host_key, container, network = sshd
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(
        "hosts:\n"
        f"  - {{name: fast-ssh, transport: ssh, address: {address}, user: root, key: {client_key[0]},"
        f" host_key: \"{host_key}\", python: {PYTHON}, targets: [linux-x86_64], speed: 10,"
        " liveness_timeout: 3}\n"
        "  - {name: dock, transport: docker, targets: [linux-x86_64]}\n"
    )
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    (spec_dir / "tinycnn.onnx").write_bytes((SPEC.parent / "tinycnn.onnx").read_bytes())
    (spec_dir / "modelpack.yaml").write_text(
        "name: tinycnn\nversion: '1'\nmodel: tinycnn.onnx\ntargets: [linux-x86_64]\n")
    cut: list[float] = []
    started = time.monotonic()

    def watch_stages() -> None:
        # cut the ssh host off as soon as its workspace exists (the upload follows at once)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, out = container.exec_run(["sh", "-c", "ls -d /root/.modelpack/runs/* 2>/dev/null"])
            if code == 0 and out.strip():
                network.disconnect(container, force=True)
                cut.append(time.monotonic())
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_stages, daemon=True)
    watcher.start()
    result: list[int] = []
    build = threading.Thread(target=lambda: result.append(main(
        ["build", str(spec_dir / "modelpack.yaml"), "--hosts", str(hosts), "--out", str(tmp_path / "d"),
         "--no-cache", "--json", str(tmp_path / "s.json")])), daemon=True)
    build.start()
    build.join(timeout=240)
    assert not build.is_alive(), "the build hung after its host was cut off"
    code = result[0]
    watcher.join(timeout=5)
    capsys.readouterr()
    assert cut, "the test must have cut the ssh host off"
    assert code == 0
    job = json.loads((tmp_path / "s.json").read_text())["jobs"][0]
    assert [a["host"] for a in job["attempts"]] == ["fast-ssh", "dock"]
    assert job["attempts"][0]["status"] == "infrastructure" and job["status"] == "built"
    assert time.monotonic() - started < 120


def test_host_down_at_start_is_disabled_once(capsys, write_spec, tmp_path):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(
        "hosts:\n"
        "  - {name: dead, transport: docker, docker_host: 'unix:///nonexistent/docker.sock',"
        " targets: [linux-x86_64], speed: 100, slots: 4}\n"
        "  - {name: here, transport: local, targets: [linux-x86_64], slots: 2}\n")
    specs = []
    for i in range(3):
        spec = write_spec(name=f"m{i}", spec_file=f"m{i}.yaml")
        specs.append(str(spec))
    code = main(["build", *specs, "--hosts", str(hosts), "--out", str(tmp_path / "d"), "--no-cache",
                 "--json", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert code == 0
    assert err.count("host dead failed its preflight check") == 1
    jobs = json.loads((tmp_path / "s.json").read_text())["jobs"]
    assert all([a["host"] for a in j["attempts"]] == ["here"] for j in jobs), "never tried after preflight"


def test_no_partial_file_ever_appears_in_out(capsys, write_spec, local_hosts, tmp_path):
    out = tmp_path / "dist"
    out.mkdir()
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for path in out.iterdir():
                seen.add(path.name)
            time.sleep(0.002)

    specs = [str(write_spec(name=f"w{i}", spec_file=f"w{i}.yaml")) for i in range(3)]
    thread = threading.Thread(target=watch)
    thread.start()
    try:
        assert main(["build", *specs, "--hosts", str(local_hosts), "--out", str(out), "--no-cache"]) == 0
    finally:
        stop.set()
        thread.join()
    capsys.readouterr()
    final = {p.name for p in out.iterdir()}
    assert seen <= final, f"transient files appeared in --out: {sorted(seen - final)}"
    assert final == {"w0-1.0.0-linux-x86_64.tar.gz", "w1-1.0.0-linux-x86_64.tar.gz", "w2-1.0.0-linux-x86_64.tar.gz",
                     "summary.json", "report.html", "junit.xml"}
