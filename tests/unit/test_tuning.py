"""Runtime settings searched on the build host and shipped (select: {tune: true})."""

from __future__ import annotations

import json

from orchestrator.cli import main
from orchestrator.packager.selection import Candidate
from orchestrator.packager.tuning import trials
from orchestrator.runtime import load
from orchestrator.runtime.archive import extract


def test_the_trials_never_touch_what_the_spec_pins():
    ncnn = Candidate("ncnn", "ncnn", "ncnn", {})
    assert trials(ncnn, {}, cores=4) == [{"threads": 1}, {"threads": 4}, {"light_mode": False}, {"packing": False}]
    pinned = {"threads": 2, "engines": {"ncnn": {"packing": True}}}
    assert trials(ncnn, pinned, cores=4) == [{"light_mode": False}]
    assert trials(Candidate("mnn", "mnn", "mnn", {}), {}, cores=1) == [{"threads": 1}]


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
