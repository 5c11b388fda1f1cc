"""When the test script stops measuring and what it decides: a clear leader stops at the
minimum rounds, a tie goes to `prefer` then the smaller artifact, and noise that never
settles runs to the cap and is reported as undecided. The worker processes are replaced
at their module boundary by ones that return chosen timings; everything else is real."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from orchestrator.packager import selection
from orchestrator.packager.ranking import MIN_ROUNDS, decide, t95
from orchestrator.packager.selection import Candidate, Measurement, benchmark_all, choose


def candidates() -> list[Candidate]:
    return [Candidate("onnxruntime", "onnxruntime", "onnxruntime", {}, status="passed", size_bytes=300,
                      artifacts=[{"path": "a"}]),
            Candidate("openvino", "openvino", "openvino", {}, status="passed", size_bytes=200,
                      artifacts=[{"path": "b"}])]


def fake_workers(monkeypatch, timings) -> list[str]:
    """Workers that answer each candidate's round with ``timings[id](round)`` ms (20 runs)."""
    asked: list[str] = []
    rounds = {}

    def run_worker(request, folder, timeout):
        cid = folder.name.removesuffix(".bench")
        asked.append(cid)
        rounds[cid] = rounds.get(cid, 0) + 1
        centre = timings[cid](rounds[cid])
        return {"times_ms": [centre * (1 + 0.001 * (i % 3)) for i in range(20)], "load_s": 0.01, "peak_rss_mb": 1.0}

    monkeypatch.setattr(selection, "run_worker", run_worker)
    return asked


def measure(tmp_path, found: list[Candidate], max_rounds: int = 10):
    return benchmark_all(found, Measurement([], {"atol": 1e-4, "rtol": 1e-3}), tmp_path, timeout=10,
                         benchmark={"budget_s": 0.1}, max_rounds=max_rounds)


def test_a_clear_leader_stops_at_the_minimum_rounds_and_wins_with_its_confidence(tmp_path, monkeypatch):
    # a shared disturbance in round 2 slows both alike: paired ratios cancel it
    asked = fake_workers(monkeypatch, {"onnxruntime": lambda r: 2.0 * (3 if r == 2 else 1),
                                       "openvino": lambda r: 1.0 * (3 if r == 2 else 1)})
    found = candidates()
    result = measure(tmp_path, found)
    assert result.verdict.decision == "leader" and result.verdict.leader == "openvino"
    assert result.verdict.rounds == MIN_ROUNDS and len(asked) == 2 * MIN_ROUNDS
    assert len(result.load) == MIN_ROUNDS and all(len(r["calibration_ms"]) == 2 for r in result.load)
    winner = choose(found, {}, result.verdict)
    assert winner.id == "openvino" and "95 % confidence" in winner.reason
    record = json.loads(json.dumps(result.to_json()))
    [versus] = record["versus_leader"]
    assert versus["candidate"] == "onnxruntime" and versus["verdict"] == "slower"
    assert versus["interval_95"][0] > 1.02 and math.isclose(versus["ratio"], 2.0, rel_tol=1e-3)


def test_a_tie_goes_to_prefer_then_to_the_smaller_artifact(tmp_path, monkeypatch):
    fake_workers(monkeypatch, {"onnxruntime": lambda r: 1.0, "openvino": lambda r: 1.0 + 0.001 * (r % 2)})
    found = candidates()
    result = measure(tmp_path, found)
    assert result.verdict.decision == "tie" and result.verdict.rounds == MIN_ROUNDS
    assert choose(found, {}, result.verdict).id == "openvino", "the smaller artifact"
    again = candidates()
    for c, measured in zip(again, found):
        c.rounds_ms = measured.rounds_ms
    assert choose(again, {"prefer": ["onnxruntime"]}, result.verdict).id == "onnxruntime"


def test_noise_that_never_settles_runs_to_the_cap_and_says_undecided(tmp_path, monkeypatch):
    swing = itertools.cycle([0.7, 1.4, 1.0, 0.8, 1.3])
    fake_workers(monkeypatch, {"onnxruntime": lambda r: 1.0, "openvino": lambda r: next(swing)})
    found = candidates()
    result = measure(tmp_path, found, max_rounds=6)
    assert result.verdict.decision == "undecided" and result.verdict.rounds == 6 and len(result.load) == 6
    winner = choose(found, {}, result.verdict)
    assert "undecided after 6 rounds" in winner.reason


def test_the_interval_is_students_t_on_the_log_ratios():
    rng = random.Random(4)
    ratios = [1.10 * math.exp(rng.gauss(0, 0.05)) for _ in range(8)]
    verdict = decide({"a": [1.0] * 8, "b": ratios}, 0.02)
    [c] = verdict.comparisons
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / 8
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 7)
    assert t95(7) == pytest.approx(2.365)
    assert c.low == pytest.approx(math.exp(mean - 2.365 * sd / math.sqrt(8)))
    assert c.high == pytest.approx(math.exp(mean + 2.365 * sd / math.sqrt(8)))


def test_a_real_build_records_its_rounds_decision_and_load_in_the_manifest(tmp_path, capsys, write_spec,
                                                                            local_hosts):
    from orchestrator.cli import main
    from orchestrator.runtime.archive import extract

    spec = write_spec(compilers=["onnxruntime", "openvino"], select={"max_rounds": 4})
    assert main(["build", str(spec), "--out", str(tmp_path / "d"), "--hosts", str(local_hosts), "--no-cache"]) == 0
    capsys.readouterr()
    extract(tmp_path / "d" / "tinycnn-1.0.0-linux-x86_64.tar.gz", tmp_path / "pkg")
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    bench = manifest["selection"]["benchmark"]
    assert MIN_ROUNDS <= bench["rounds"] <= 4 == bench["max_rounds"] and len(bench["load"]) == bench["rounds"]
    assert all(r["calibration_ms"][0] > 0 and r["loadavg_1m"] is not None for r in bench["load"])
    assert bench["contention"] >= 1.0
    rows = {c["id"]: c for c in manifest["candidates"]}
    assert all(len(rows[cid]["latency_ms"]["round_medians"]) == bench["rounds"] for cid in rows)
    [versus] = bench["versus_leader"]
    assert {bench["leader"], versus["candidate"]} == {"onnxruntime", "openvino"}
    if bench["decision"] == "leader":
        assert manifest["selection"]["selected"] == bench["leader"]
    else:
        assert bench["decision"] in ("tie", "undecided")


def test_two_selection_jobs_on_one_two_slot_host_benchmark_one_at_a_time_the_other_paused(tmp_path, write_spec):
    """Both jobs start together on a host with two slots: their timing windows never
    overlap (the host's benchmark lease), and whichever benchmarks first has the other's
    packager paused meanwhile (it is still compiling, gating or waiting)."""
    from tests.conftest import two_jobs_take_turns

    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("hosts:\n  - {name: here, transport: local, targets: [linux-x86_64], slots: 2}\n")
    two_jobs_take_turns(write_spec, tmp_path, hosts)


def test_a_candidate_is_not_made_the_leader_by_where_it_runs_in_the_round(tmp_path, monkeypatch):
    # whatever runs first after the round's load sample is 10 % slower (cold caches,
    # a frequency step): two equal candidates must not be ranked by their place
    asked: list[str] = []

    def run_worker(request, folder, timeout):
        asked.append(folder.name.removesuffix(".bench"))
        first = len(asked) % 2 == 1
        return {"times_ms": [1.1 if first else 1.0] * 20, "load_s": 0.01, "peak_rss_mb": 1.0}

    monkeypatch.setattr(selection, "run_worker", run_worker)
    result = measure(tmp_path, candidates(), max_rounds=6)
    assert result.verdict.decision != "leader", result.to_json()
    assert asked[:4] == ["onnxruntime", "openvino", "openvino", "onnxruntime"]
