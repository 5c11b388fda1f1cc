"""Worker process for one candidate: compile it, or measure it.

Converters and engines can crash the process that calls them (ncnn segfaults on some
LSTM models), so the packager never calls them in its own process: each step runs here,
in a child with a time limit, and a crash becomes one row in the candidates table.

    python -m orchestrator.packager.worker compile|measure REQUEST.json RESULT.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.checks import compare_outputs
from ..runtime.engines import open_artifact
from .compilers import CompileContext, parse_options, registry
from .job import JobTarget


def compile_candidate(request: dict[str, Any]) -> dict[str, Any]:
    compiler = registry()[request["compiler"]]
    options = parse_options(compiler.options_type, request["options"])
    context = CompileContext(request["inputs"], request["outputs"])
    result = compiler.compile(Path(request["model"]), Path(request["root"]), JobTarget(**request["target"]),
                              options, context)
    return {"artifacts": [vars(a) for a in result.artifacts], "reproducible": result.reproducible}


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


def measure_candidate(request: dict[str, Any]) -> dict[str, Any]:
    """Load, check accuracy on the golden samples, then (if asked) benchmark."""
    artifact = request["artifact"]
    feeds = {name: np.load(path) for name, path in request["inputs"].items()}
    reference = {name: np.load(path) for name, path in request["reference"].items()}
    started = time.perf_counter()
    runner = open_artifact(artifact["engine"], Path(request["root"]) / artifact["path"], artifact.get("runtime", {}))
    outputs = runner.run(feeds)
    load_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "accuracy": compare_outputs(outputs, reference, request["atol"], request["rtol"]).to_json(),
    }
    bench = request.get("benchmark")
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
    request = json.loads(Path(request_path).read_text())
    try:
        result = {"ok": True, **(compile_candidate(request) if kind == "compile" else measure_candidate(request))}
    except Exception as exc:  # reported as the candidate's failure reason
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        result = {"ok": False, "error": f"{type(exc).__name__}: {message}"}
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
