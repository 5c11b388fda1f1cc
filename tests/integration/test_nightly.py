"""Nightly-matrix behaviour with fault injection against real hosts: a host that is
down at start, and the output folder watched for partial files."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from orchestrator.cli import main



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
