"""Worker process for one candidate: compile it, or measure it.

Converters and engines can crash the process that calls them (ncnn segfaults on some
LSTM models), so the packager never calls them in its own process: each step runs here,
in a child with a time limit, and a crash becomes one row in the candidates table.

    python -m orchestrator.packager.worker compile|measure REQUEST.json RESULT.json
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.checks import Tolerance, compare_outputs
from ..runtime.engines import open_artifact
from ..runtime.functions import TAP_PREFIX
from .accelerate import VARIANTS, transform
from .causes import exception_cause
from .compilers import CompileContext, parse_options, registry
from .evaluate import GateTensors, load_sample_list, loss_report, task_verdict
from .job import JobTarget
from .messages import CompileRequest, MeasureRequest, WorkerResult


def compile_candidate(request: CompileRequest) -> dict[str, Any]:
    """Compile one candidate; an acceleration variant's ONNX transform runs first."""
    compiler = registry()[request.compiler]
    options = parse_options(compiler.options_type, request.options)
    context = CompileContext(request.inputs, request.outputs, request.alternate_inputs)
    model, root = Path(request.model), Path(request.root)
    notes: list[str] = []
    variant = VARIANTS.get(request.variant or "")
    if variant is not None and variant.transform:
        root.mkdir(parents=True, exist_ok=True)
        transformed = root.parent / f"{root.name}.variant.onnx"
        calibration = request.calibration
        notes = transform(variant.transform, model, transformed, Path(calibration) if calibration else None)
        model = transformed
    result = compiler.compile(model, root, JobTarget(**request.target), options, context)
    return {"artifacts": [vars(a) for a in result.artifacts], "reproducible": result.reproducible,
            "preparation": notes, "notes": result.notes}


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


def measure_candidate(request: MeasureRequest) -> dict[str, Any]:
    """Load, check accuracy on the golden samples at every size, judge a variant on the
    held-out samples, then (if asked) benchmark."""
    artifact = request.artifact
    tensors = GateTensors.from_json(request.tensors)
    tolerance = Tolerance.from_json(request.tolerance)
    # a variant is held to the tolerance on the model's own outputs, not on fused
    # post-processing (a top-k's order flips on any tie, its sorted scores hide any loss)
    keep = {*tensors.model.values(), *tensors.dense} if request.variant and tensors.model else None
    sizes = [({name: np.load(path) for name, path in s["inputs"].items()},
              {name: np.load(path) for name, path in s["reference"].items() if keep is None or name in keep})
             for s in request.sizes]
    if keep is None:  # the package's outputs, and the dense taps behind outputs left empty
        sizes = [(f, {k: v for k, v in r.items() if not k.startswith(TAP_PREFIX) or k in tensors.dense})
                 for f, r in sizes]
    feeds = sizes[0][0]
    started = time.perf_counter()
    runner = open_artifact(artifact["engine"], Path(request.root) / artifact["path"], artifact.get("runtime", {}))
    outputs = runner.run(feeds)
    load_s = time.perf_counter() - started
    accuracy = compare_outputs(outputs, sizes[0][1], tolerance).to_json()
    accuracy["sizes"] = {request.sizes[0]["point"]: _size_check(outputs, sizes[0][1], accuracy["passed"], None)}
    for size, (size_feeds, size_reference) in zip(request.sizes[1:], sizes[1:]):
        try:
            size_outputs = runner.run(size_feeds)
        except Exception as exc:  # an engine that cannot run this size: the finding, not a crash
            accuracy["sizes"][size["point"]] = {"ran": False, "passed": False,
                                                "problem": f"the engine failed: {exception_cause(exc)}"}
            continue
        comparison = compare_outputs(size_outputs, size_reference, tolerance)
        accuracy["sizes"][size["point"]] = _size_check(size_outputs, size_reference, comparison.passed,
                                                       None if comparison.passed else comparison.summary())
    result: dict[str, Any] = {"accuracy": accuracy}
    if request.evaluation:
        held = load_sample_list(request.evaluation["inputs"])
        reference = load_sample_list(request.evaluation["reference"])
        held_outputs = [runner.run(feed) for feed in held]
        result["held_out"] = loss_report(held_outputs, reference, tensors, (request.gate or {}).get("iou", 0.5))
        if not request.gate:  # the tolerance holds on every held-out sample too, not on one golden sample
            accuracy["held_out"] = held_out_tolerance(held_outputs, reference, tensors, tolerance)
            accuracy["passed"] = accuracy["passed"] and accuracy["held_out"]["passed"]
        else:
            result["task_gate"] = task_gate(request.gate, held_outputs, reference, held, tensors,
                                            request.metric_file)
    bench = request.benchmark
    if bench:
        result["load_s"] = round(load_s, 4)
        deadline = time.perf_counter() + bench["warmup_s"]
        while time.perf_counter() < deadline:
            runner.run(feeds)
        times = []
        deadline = time.perf_counter() + bench["budget_s"]
        while len(times) < bench["min_runs"] or (time.perf_counter() < deadline and len(times) < bench["max_runs"]):
            t0 = time.perf_counter()
            runner.run(feeds)
            times.append((time.perf_counter() - t0) * 1000.0)
        result["times_ms"] = times
        result["peak_rss_mb"] = _peak_rss_mb()
    return result


def held_out_tolerance(outputs: list[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]],
                       tensors: GateTensors, tolerance: Tolerance) -> dict[str, Any]:
    """The tolerance over the held-out samples, on the model's own outputs: how many
    samples it holds for, and the first that it does not."""
    model = list(tensors.model.values())
    failing = []
    for index, (got, want) in enumerate(zip(outputs, reference)):
        comparison = compare_outputs(got, {k: want[k] for k in model if k in want}, tolerance)
        if not comparison.passed:
            failing.append(f"sample {index}: {comparison.summary()}")
    return {"passed": not failing, "samples": len(outputs), "failing": len(failing),
            "first_failure": failing[0] if failing else None}


def _size_check(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], passed: bool,
                problem: str | None) -> dict[str, Any]:
    """One size's result: whether the engine ran it with the reference's output shapes
    (what a task-gated variant must do) and whether it is within the tolerance."""
    shapes = [name for name, want in reference.items()
              if name not in outputs or np.shape(outputs[name]) != np.shape(want)]
    ran = not shapes
    if not ran and problem is None:
        problem = f"output {shapes[0]!r} has the wrong shape"
    return {"ran": ran, "passed": passed, "problem": problem}


def task_gate(gate: dict[str, Any], outputs: list[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]],
              inputs: list[dict[str, np.ndarray]], tensors: GateTensors, metric_file: str | None) -> dict[str, Any]:
    """The gate's criterion over the held-out samples, on the model's own outputs: a
    proportion with its 95 % interval, or the drop of the user's metric (which gets the
    model's outputs by the model's own names)."""
    if "metric" not in gate:
        return task_verdict(gate, outputs, reference, tensors)
    module_path, function = Path(metric_file or ""), gate["metric"].rsplit(":", 1)[1]
    spec = importlib.util.spec_from_file_location("modelpack_user_metric", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    metric = getattr(module, function)

    def own(samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [{name: s[tensor] for name, tensor in tensors.model.items()} for s in samples]

    baseline, value = float(metric(own(reference), inputs)), float(metric(own(outputs), inputs))
    drop = baseline - value
    return {"criterion": f"{gate['metric']} drops by at most {gate['max_drop']:g}",
            "tensor": ", ".join(tensors.model.values()), "value": round(value, 6),
            "baseline": round(baseline, 6), "drop": round(drop, 6), "samples": len(inputs),
            "passed": drop <= gate["max_drop"]}


def latency_stats(rounds_ms: list[list[float]]) -> dict[str, Any]:
    """Latency statistics over interleaved benchmark rounds. Disturbances on a shared
    machine only ever add time, so the figures come from the least disturbed round
    (the one with the lowest median); every round's median is kept for the record."""
    medians = [statistics.median(r) for r in rounds_ms]
    best = sorted(rounds_ms[medians.index(min(medians))])
    p10 = best[int(0.1 * (len(best) - 1))]
    p90 = best[int(0.9 * (len(best) - 1))]
    return {
        "median": round(statistics.median(best), 4),
        "p90": round(p90, 4),
        "mean": round(statistics.fmean(best), 4),
        "min": round(best[0], 4),
        "spread": round(p90 - p10, 4),
        "runs": sum(len(r) for r in rounds_ms),
        "round_medians": [round(m, 4) for m in medians],
    }


def main(argv: list[str] | None = None) -> int:
    kind, request_path, result_path = (argv if argv is not None else sys.argv[1:])
    text = Path(request_path).read_text()
    try:
        if kind == "compile":
            result = WorkerResult(found=compile_candidate(CompileRequest.from_json(text)))
        else:
            result = WorkerResult(found=measure_candidate(MeasureRequest.from_json(text)))
    except Exception as exc:  # reported as the candidate's failure reason
        result = WorkerResult(error=f"{type(exc).__name__}: {exception_cause(exc)}")
    Path(result_path).write_text(result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
