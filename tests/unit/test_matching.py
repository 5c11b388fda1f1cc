"""Host matching by features, as in Nix's machines file, and longest-first ordering."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.cache import DurationHistory
from orchestrator.cli import main


def hosts_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n" + "".join(f"  - {line}\n" for line in lines))
    return path


def test_required_features_pick_the_host_that_has_them(capsys, write_spec, tmp_path):
    hosts = hosts_file(tmp_path,
                       "{name: plain, transport: local, targets: [linux-x86_64], slots: 4}",
                       "{name: fancy, transport: local, targets: [linux-x86_64], features: [avx512, big]}")
    spec = write_spec(features={"linux-x86_64": ["avx512"]})
    assert main(["build", str(spec), "--hosts", str(hosts), "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["jobs"][0]["host"] == "fancy"


def test_no_host_with_the_feature_explains_each_rejection(capsys, write_spec, tmp_path):
    hosts = hosts_file(tmp_path,
                       "{name: plain, transport: local, targets: [linux-x86_64]}",
                       "{name: gpu-box, transport: local, targets: [linux-x86_64], features: [cuda], "
                       "mandatory_features: [cuda]}")
    assert main(["build", str(write_spec(features={"linux-x86_64": ["xcode-16"]})), "--hosts", str(hosts),
                 "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "plain: lacks required feature(s) xcode-16" in err and "gpu-box: lacks required feature(s) xcode-16" in err
    assert main(["build", str(write_spec()), "--hosts", str(hosts), "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["jobs"][0]["host"] == "plain", "a mandatory-feature host takes only jobs that ask for it"


def test_features_must_name_a_listed_target(capsys, write_spec, local_hosts, tmp_path):
    spec = write_spec(features={"ios-arm64": ["xcode-16"]})
    assert main(["build", str(spec), "--hosts", str(local_hosts), "--out", str(tmp_path / "d")]) == 2
    assert "not in targets" in capsys.readouterr().err


def test_longest_jobs_go_first_and_unknown_ones_before_them(tmp_path):
    class J:
        def __init__(self, id: str) -> None:
            self.id = id

    (tmp_path / "d.json").write_text(json.dumps({"a": 5.0, "b": 50.0, "c": 1.0}))
    history = DurationHistory(tmp_path / "d.json")
    order = [j.id for j in history.longest_first([J("a"), J("b"), J("c"), J("new")])]
    assert order == ["new", "b", "a", "c"]


def test_preflight_disables_a_host_short_of_disk_and_builds_elsewhere(capsys, write_spec, tmp_path):
    import shutil
    import tempfile

    free_gb = shutil.disk_usage(tempfile.gettempdir()).free / (1 << 30)
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(
        "hosts:\n"
        f"  - {{name: full, transport: local, targets: [linux-x86_64], speed: 100, min_free_gb: {free_gb * 2 + 1:.0f}}}\n"
        "  - {name: roomy, transport: local, targets: [linux-x86_64], min_free_gb: 0.001}\n")
    assert main(["hosts", "check", "--hosts", str(hosts)]) == 1
    out = capsys.readouterr().out
    assert "FAIL full" in out and "GB free in" in out and "below min_free_gb" in out and "ok   roomy" in out
    code = main(["build", str(write_spec()), "--hosts", str(hosts), "--out", str(tmp_path / "d"), "--no-cache",
                 "--json", str(tmp_path / "s.json")])
    assert code == 0
    assert "host full failed its preflight check" in capsys.readouterr().err
    job = json.loads((tmp_path / "s.json").read_text())["jobs"][0]
    assert [a["host"] for a in job["attempts"]] == ["roomy"]
