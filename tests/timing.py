"""Independent latency measurement of packages and models, shared by the tests that
check what selection shipped and by ``scripts/bench-peers``.

Every contender runs one harness in a fresh process per round, pinned to the same
cores, with rounds interleaved across contenders so that noise hits them alike. Two
contenders are compared by the ratio of their medians within each round (timed back to
back, so slow drift of the machine cancels): the median of those ratios and their
interquartile range.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

from orchestrator.packager.worker import latency_stats

REPO = Path(__file__).resolve().parent.parent

# One harness for every contender: a package through modelpack's runtime, an .onnx
# through onnxruntime. argv: JSON {kind, path, feeds (npz), mode: time|outputs, ...}.
HARNESS = r"""
import json, statistics, sys, time
import numpy as np
job = json.loads(sys.argv[1])
with np.load(job["feeds"]) as z:
    arrays = {k: z[k] for k in z.files}
count = len(next(iter(arrays.values())))
if job["kind"] == "package":
    sys.path.insert(0, job["repo"])
    from orchestrator.runtime import load
    run = load(job["path"]).run
else:
    import onnxruntime as ort
    session = ort.InferenceSession(job["path"], providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]  # once: a peer pays no more per call than it must
    run = lambda feeds: dict(zip(names, session.run(names, feeds)))
if job["mode"] == "outputs":
    outs = [run({k: np.asarray(v[i]) for k, v in arrays.items()}) for i in range(count)]
    np.savez(job["out"], **{f"{i}/{name}": value for i, o in enumerate(outs) for name, value in o.items()})
else:
    feeds = {k: np.asarray(v[0]) for k, v in arrays.items()}  # a 0-d input stays an array
    end = time.perf_counter() + job["warmup_s"]
    while time.perf_counter() < end:
        run(feeds)
    times, end = [], time.perf_counter() + job["budget_s"]
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter(); run(feeds); times.append((time.perf_counter() - start) * 1000)
    print(json.dumps(times))
"""

#: the cores every timed process runs on: the same for every contender
CORES: set[int] = set(os.sched_getaffinity(0))

#: a contender: (kind: "package" or "onnx", its path, the Python that runs it)
Contender = tuple[str, Path, Path]


def harness(python: Path, job: dict[str, Any]) -> subprocess.CompletedProcess:
    """One harness process (``job`` as in :data:`HARNESS`) on :data:`CORES`."""
    return subprocess.run([str(python), "-c", HARNESS, json.dumps({"repo": str(REPO), **job})],
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.sched_setaffinity(0, CORES))


def time_interleaved(contenders: dict[str, Contender], feeds: Path, rounds: int,
                     budget_s: float = 0.3) -> dict[str, dict[str, Any]]:
    """Each contender's latency statistics (``latency_stats``: its least disturbed round,
    and every round's median), from ``rounds`` interleaved rounds of ``budget_s`` each on
    the first sample of ``feeds`` (an .npz of stacked samples). Raises RuntimeError
    naming the contender whose harness failed."""
    times: dict[str, list[list[float]]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (kind, path, python) in contenders.items():
            done = harness(python, {"kind": kind, "path": str(path), "feeds": str(feeds), "mode": "time",
                                    "warmup_s": 0.1, "budget_s": budget_s})
            if done.returncode:
                raise RuntimeError(f"{name}: the timing harness failed: {done.stderr.strip()[-800:]}")
            times[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {name: latency_stats(rounds_ms) for name, rounds_ms in times.items()}


def paired(timed: dict[str, dict[str, Any]], name: str, other: str) -> dict[str, float]:
    """``name`` / ``other`` within each round: the median of those ratios (``ratio``) and
    their interquartile range (``low``, ``high``)."""
    per_round = sorted(a / b for a, b in zip(timed[name]["round_medians"], timed[other]["round_medians"]))
    quartiles = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
    return {"ratio": statistics.median(per_round), "low": quartiles[0], "high": quartiles[2]}
