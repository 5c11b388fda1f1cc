"""Runtime settings searched on the build host and shipped (select: {tune: true})."""

from __future__ import annotations

import json

from orchestrator.cli import main
from orchestrator.packager.selection import Candidate, Measurement
from orchestrator.packager.tuning import tune, trials
from orchestrator.runtime import load
from orchestrator.runtime.archive import extract


def test_the_trials_never_touch_what_the_spec_pins():
    ncnn = Candidate("ncnn", "ncnn", "ncnn", {})
    assert trials(ncnn, {}, cores=4) == [{"threads": 1}, {"threads": 4}, {"light_mode": False}, {"packing": False}]
    pinned = {"threads": 2, "engines": {"ncnn": {"packing": True}}}
    assert trials(ncnn, pinned, cores=4) == [{"light_mode": False}]
    assert trials(Candidate("mnn", "mnn", "mnn", {}), {}, cores=1) == [{"threads": 1}]


def tournament(tmp_path, monkeypatch, timings):
    """Tune one OpenVINO candidate on a 1-core host (trial 1: ``threads: 1``) with workers
    that answer each entry's round from ``timings[suffix](round)``: the worker processes
    are replaced at their module boundary, the measuring and deciding are real."""
    from tests.unit.test_ranking import fake_workers

    built = Candidate("openvino", "openvino", "openvino", {}, status="passed", size_bytes=100,
                      artifacts=[{"path": "model.xml", "role": "primary"}])
    names = {"as-built": "openvino~as-built", "control": "openvino~as-built-again", "threads 1": "openvino~1",
             "throughput": "openvino~2"}
    fake_workers(monkeypatch, {names[k]: f for k, f in timings.items()})
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    return tune([built], Measurement([], {"atol": 1e-4, "rtol": 1e-3}), tmp_path, 10, {"budget_s": 0.1}, {},
                "latency", 6, lambda line: None)


def test_a_setting_that_wins_by_less_than_the_package_differs_from_itself_is_not_shipped(tmp_path, monkeypatch):
    # the same package measured twice swings 6 % either way; the setting is 4 % faster
    _, settings, record = tournament(tmp_path, monkeypatch, {
        "as-built": lambda r: 1.0, "control": lambda r: 1.06 if r % 2 else 0.94,
        "threads 1": lambda r: 0.96, "throughput": lambda r: 1.2})
    assert settings == {}, record["benchmark"]
    assert record["margin"] > 0.06 and record["chosen"]["settings"] == {}
    assert [t["control"] for t in record["tried"]] == [False, True, False, False]


def test_a_setting_that_wins_by_more_than_that_is_shipped(tmp_path, monkeypatch):
    _, settings, record = tournament(tmp_path, monkeypatch, {
        "as-built": lambda r: 1.0, "control": lambda r: 1.005 if r % 2 else 0.995,
        "threads 1": lambda r: 0.8, "throughput": lambda r: 1.2})
    assert settings == {"threads": 1}, record["benchmark"]
    assert 0.02 <= record["margin"] < 0.05 and record["benchmark"]["decision"] == "leader"


def test_a_tuned_build_measures_each_setting_and_ships_the_chosen_one(tmp_path, capsys, write_spec, local_hosts):
    spec = write_spec(compilers=["onnxruntime", "openvino"], select={"tune": True, "max_rounds": 3})
    assert main(["build", str(spec), "--out", str(tmp_path / "d"), "--hosts", str(local_hosts), "--no-cache"]) == 0
    capsys.readouterr()
    extract(tmp_path / "d" / "tinycnn-1.0.0-linux-x86_64.tar.gz", tmp_path / "pkg")
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    tuning = manifest["selection"]["tuning"]
    tried = {(t["candidate"], json.dumps(t["settings"], sort_keys=True)) for t in tuning["tried"]}
    for engine, setting in (("onnxruntime", {"execution_mode": "parallel"}),
                            ("openvino", {"performance_hint": "THROUGHPUT"})):
        assert {(engine, "{}"), (engine, json.dumps(setting)), (engine, '{"threads": 1}')} <= tried
    assert all(t["figure_ms"] > 0 for t in tuning["tried"] if t["status"] == "passed")
    assert tuning["benchmark"]["rounds"] >= 3 and len(tuning["benchmark"]["load"]) == tuning["benchmark"]["rounds"]
    chosen = tuning["chosen"]
    assert manifest["selection"]["selected"] == chosen["candidate"]
    primary = next(a for a in manifest["artifacts"] if a["role"] == "primary")
    assert {k: primary["runtime"].get(k) for k in chosen["settings"]} == chosen["settings"]
    session = load(tmp_path / "pkg")
    assert session.self_test().passed
