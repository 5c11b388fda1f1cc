"""The test script's isolation and choice: real worker processes on real artifacts."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from orchestrator.packager.compilers import registry
from orchestrator.packager.job import CompilerCall, JobTarget
from orchestrator.packager.selection import (
    Candidate, CompileSetting, Measurement, benchmark_all, choose, compile_all, gate_all,
)
from tests.models import TINYCNN

GATE = {"atol": 1e-4, "rtol": 1e-3}

TARGET = JobTarget("linux-x86_64", "linux", "x86_64", "linux", "x86_64")
IO = ([{"name": "image", "dtype": "float32", "shape": [1, 3, 32, 32]}],
      [{"name": "probs", "dtype": "float32", "shape": [1, 10]}])


def golden(tmp_path: Path) -> list[dict]:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(TINYCNN), options, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", ref)
    return [{"point": "bench", "inputs": {"image": str(tmp_path / "x.npy")}, "reference": {"probs": str(tmp_path / "ref.npy")}}]


def _kill_benchmarking_worker(stop: threading.Event) -> None:
    """SIGSEGV the first worker process seen benchmarking, as a crashing engine would."""
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            try:
                parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent != os.getpid():  # only our own workers, never another run's
                continue
            if b"orchestrator.packager.worker" in cmdline and any(b"mnn.bench" in part for part in cmdline):
                os.kill(int(pid), signal.SIGSEGV)
                return
        time.sleep(0.01)


def test_a_crashing_candidate_is_isolated_and_the_others_still_compete(tmp_path):
    calls = [CompilerCall("onnxruntime"), CompilerCall("mnn"), CompilerCall("openvino")]
    candidates = compile_all(calls, registry(), TARGET, CompileSetting(TINYCNN, *IO), tmp_path / "c", timeout=120)
    assert [c.status for c in candidates] == ["compiled"] * 3
    stop = threading.Event()
    killer = threading.Thread(target=_kill_benchmarking_worker, args=(stop,), daemon=True)
    killer.start()
    bench = {"warmup_s": 0.05, "budget_s": 3.0, "min_runs": 5, "max_runs": 100000}
    measurement = Measurement(golden(tmp_path), GATE)
    gate_all(candidates, measurement, tmp_path / "m", timeout=120)
    benchmark_all(candidates, measurement, tmp_path / "m", timeout=120, benchmark=bench, rounds=1)
    stop.set()
    rows = {c.id: c for c in candidates}
    assert rows["mnn"].status == "crashed" and "SIGSEGV" in rows["mnn"].reason
    winner = choose(candidates, {})
    assert winner is not None and winner.id in ("onnxruntime", "openvino")
    assert rows["onnxruntime"].rounds_ms and rows["openvino"].rounds_ms


def test_a_hung_worker_is_stopped_at_its_time_limit(tmp_path):
    calls = [CompilerCall("onnxruntime")]
    [candidate] = compile_all(calls, registry(), TARGET, CompileSetting(TINYCNN, *IO), tmp_path / "c", timeout=120)
    started = time.monotonic()
    bench = {"warmup_s": 60.0, "budget_s": 60.0, "min_runs": 5, "max_runs": 100000}
    measurement = Measurement(golden(tmp_path), GATE)
    gate_all([candidate], measurement, tmp_path / "m", timeout=120)
    benchmark_all([candidate], measurement, tmp_path / "m", timeout=3, benchmark=bench, rounds=1)
    assert time.monotonic() - started < 30
    assert candidate.status == "failed" and "timed out after 3 s" in candidate.reason


def test_unsupported_and_unavailable_compilers_are_listed_not_dropped(tmp_path):
    ios = JobTarget("ios-arm64", "ios", "aarch64", "macos", "aarch64")
    [ov] = compile_all([CompilerCall("openvino")], registry(), ios, CompileSetting(TINYCNN, *IO), tmp_path, timeout=60)
    assert ov.status == "unsupported" and "cannot build for ios-arm64" in ov.reason


def _passed(cid: str, engine: str, median: float, size: int) -> Candidate:
    c = Candidate(cid, cid, engine, {}, status="passed", size_bytes=size)
    c.rounds_ms = [[median] * 9, [median * 1.5] * 9]
    return c


def test_policy_metric_budget_prefer_and_force():
    def fresh():
        return [_passed("onnxruntime", "onnxruntime", 1.00, 300), _passed("openvino", "openvino", 0.99, 200),
                _passed("mnn", "mnn", 2.0, 100)]

    assert choose(fresh(), {}).id == "openvino"
    assert choose(fresh(), {"prefer": ["onnxruntime"]}).id == "onnxruntime", "within 2%: prefer decides"
    assert choose(fresh(), {"metric": "size"}).id == "mnn"
    assert choose(fresh(), {"engine": "mnn"}).id == "mnn"
    over = fresh()
    assert choose(over, {"latency_budget_ms": 0.5}) is None
    assert all(c.status == "over-budget" for c in over)
    rejected = fresh()
    rejected[2].status = "rejected"
    assert choose(rejected, {"engine": "mnn"}) is None


def test_the_mnn_converter_never_installs_packages_or_phones_home(tmp_path, monkeypatch):
    """MNN's Python converter entry point imports a telemetry logger that runs `pip install`
    and reports every conversion to a remote server; modelpack must bypass it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "pip-was-run"
    for tool in ("pip", "pip3"):
        script = bin_dir / tool
        script.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    [mnn] = compile_all([CompilerCall("mnn")], registry(), TARGET, CompileSetting(TINYCNN, *IO), tmp_path / "c",
                        timeout=120)
    assert mnn.status == "compiled", mnn.reason
    assert not marker.exists(), f"the converter ran pip: {marker.read_text()}"


def test_a_fixed_shape_compiler_is_rejected_or_kept_static_by_policy(tmp_path):
    """A compiler that needs fixed shapes (Core ML traces one size) gets the fixed model;
    where the package is checked at more than one size, it runs at the benchmark size
    only: rejected by default, packaged static with `fixed_shapes: allow`."""
    import onnx
    import onnxruntime as ort

    from orchestrator.packager.compilers.onnxruntime import OnnxRuntimeCompiler
    from orchestrator.packager.normalise import fix_shapes

    class FixedShapeOnnxRuntime(OnnxRuntimeCompiler):
        fixed_shapes = True

    fixed = tmp_path / "fixed.onnx"
    onnx.save(fix_shapes(onnx.load(str(TINYCNN)), {"image": [1, 3, 32, 32]}), str(fixed))
    sizes = golden(tmp_path)
    x2 = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x2.npy", x2)
    np.save(tmp_path / "ref2.npy", ort.InferenceSession(str(TINYCNN), providers=["CPUExecutionProvider"])
            .run(None, {"image": x2})[0])
    sizes.append({"point": "probe", "inputs": {"image": str(tmp_path / "x2.npy")},
                  "reference": {"probs": str(tmp_path / "ref2.npy")}})
    setting = CompileSetting(TINYCNN, *IO, fixed_model=fixed)
    for policy in ("reject", "allow"):
        compilers = {**registry(), "onnxruntime": FixedShapeOnnxRuntime()}
        candidates = compile_all([CompilerCall("onnxruntime"), CompilerCall("openvino")], compilers, TARGET,
                                 setting, tmp_path / policy, timeout=120)
        gate_all(candidates, Measurement(sizes, GATE, policy), tmp_path / f"{policy}.m", timeout=120)
        fixed_one, dynamic_one = candidates
        assert fixed_one.fixed_shapes and not dynamic_one.fixed_shapes
        assert dynamic_one.status == "passed" and dynamic_one.static is None, dynamic_one.reason
        if policy == "reject":
            assert fixed_one.status == "rejected"
            assert "compiled for fixed input shapes" in fixed_one.reason and "fixed_shapes: allow" in fixed_one.reason
        else:
            assert fixed_one.status == "passed" and "benchmark size only" in fixed_one.static
