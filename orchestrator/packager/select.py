"""The test script: build every candidate, gate it on accuracy, benchmark it, pick one.

Every candidate is compiled and measured in its own worker process with a time limit,
so a converter or engine that crashes or hangs costs one row in the table, never the
build. The accuracy gate compares each output with the reference (the source model
under onnxruntime with optimisations disabled) under the spec's tolerance. With more
than one candidate the survivors are benchmarked in interleaved rounds, so machine
noise hits them alike, and the selection policy picks the winner; with one compiler
there is nothing to choose and no timing is recorded, which keeps such packages
byte-reproducible.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .compilers import Compiler
from .job import CompilerCall, JobTarget
from .worker import latency_stats

#: within this fraction of the best value, candidates tie and `prefer` decides
TIE = 0.02


@dataclass
class Candidate:
    id: str
    compiler: str
    engine: str
    options: dict[str, Any]
    version: str | None = None
    status: str = "pending"  # selected | passed | rejected | over-budget | failed | crashed | unsupported | unavailable
    reason: str | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    reproducible: bool = True
    accuracy: dict[str, Any] | None = None
    rounds_ms: list[list[float]] = field(default_factory=list)
    load_s: float | None = None
    peak_rss_mb: float | None = None
    size_bytes: int | None = None
    root: Path | None = None

    @property
    def latency(self) -> dict[str, float] | None:
        return latency_stats(self.rounds_ms) if self.rounds_ms else None

    def row(self, emulated: bool) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id, "compiler": self.compiler, "compiler_version": self.version, "engine": self.engine,
            "options": self.options, "status": self.status, "reason": self.reason,
            "accuracy": self.accuracy, "size_bytes": self.size_bytes,
        }
        if self.rounds_ms:
            row.update(latency_ms=self.latency, load_s=self.load_s, peak_rss_mb=self.peak_rss_mb, emulated=emulated)
        return row


class WorkerFailed(RuntimeError):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def run_worker(kind: str, request: dict[str, Any], folder: Path, timeout: float) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    request_path, result_path = folder / f"{kind}.request.json", folder / f"{kind}.result.json"
    request_path.write_text(json.dumps(request))
    result_path.unlink(missing_ok=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.packager.worker", kind, str(request_path), str(result_path)],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise WorkerFailed("failed", f"{kind} timed out after {timeout:g} s") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise WorkerFailed("crashed", f"{kind} crashed the worker process ({name})")
    if not result_path.is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
        raise WorkerFailed("crashed", f"{kind} worker exited with code {proc.returncode}: {tail}")
    result = json.loads(result_path.read_text())
    if not result.get("ok"):
        raise WorkerFailed("failed", f"{kind} failed: {result.get('error')}")
    return result


def _quiet(message: str) -> None:
    pass


def compile_all(
    calls: list[CompilerCall], compilers: dict[str, Compiler], target: JobTarget, model: Path,
    inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], work: Path, timeout: float,
    progress: Callable[[str], None] = _quiet,
) -> list[Candidate]:
    """One candidate per compiler call. Unsupported, unavailable and failed ones stay in
    the list with their reason: nothing is dropped silently."""
    candidates = []
    seen: dict[str, int] = {}
    for number, call in enumerate(calls, 1):
        progress(f"compile: {call.name} ({number}/{len(calls)})")
        compiler = compilers[call.name]
        seen[call.name] = seen.get(call.name, 0) + 1
        cid = call.name if seen[call.name] == 1 else f"{call.name}#{seen[call.name]}"
        candidate = Candidate(cid, call.name, compiler.engine, dict(call.options), version=compiler.version())
        candidates.append(candidate)
        if target.name not in compiler.targets:
            candidate.status, candidate.reason = "unsupported", f"{call.name} cannot build for {target.name}"
            continue
        if candidate.version is None:
            candidate.status, candidate.reason = "unavailable", f"{call.name} is not installed on this host"
            continue
        root = work / cid.replace("#", "-")
        if root.exists():
            shutil.rmtree(root)
        request = {"compiler": call.name, "options": call.options, "model": str(model), "root": str(root),
                   "target": vars(target), "inputs": inputs, "outputs": outputs}
        try:
            result = run_worker("compile", request, work / f"{cid.replace('#', '-')}.worker", timeout)
        except WorkerFailed as exc:
            candidate.status, candidate.reason = exc.status, str(exc)
            continue
        candidate.root = root
        candidate.artifacts = result["artifacts"]
        candidate.reproducible = result["reproducible"]
        candidate.size_bytes = sum((root / a["path"]).stat().st_size for a in candidate.artifacts)
        candidate.status = "compiled"
    return candidates


def measure_all(
    candidates: list[Candidate], samples: dict[str, dict[str, str]], atol: float, rtol: float,
    work: Path, timeout: float, benchmark: dict[str, Any] | None, rounds: int = 5,
    progress: Callable[[str], None] = _quiet,
) -> None:
    """Gate every compiled candidate; benchmark the ones that pass in interleaved rounds."""
    def request(c: Candidate, artifact: dict[str, Any], bench: dict[str, Any] | None) -> dict[str, Any]:
        return {"root": str(c.root), "artifact": artifact, "inputs": samples["inputs"],
                "reference": samples["reference"], "atol": atol, "rtol": rtol, "benchmark": bench}

    for c in (c for c in candidates if c.status == "compiled"):
        progress(f"select: accuracy gate {c.id}")
        runnable = [a for a in c.artifacts if a["role"] in ("primary", "alternate")]
        try:
            checks = {a["path"]: run_worker("measure", request(c, a, None), work / f"{c.id}.gate", timeout)
                      for a in runnable}
        except WorkerFailed as exc:
            c.status, c.reason = exc.status, str(exc)
            continue
        primary = checks[runnable[0]["path"]]["accuracy"]
        c.accuracy = primary
        failing = {p: r["accuracy"] for p, r in checks.items() if not r["accuracy"]["passed"]}
        if failing:
            c.status = "rejected"
            c.reason = "; ".join(f"{p}: " + _gate_summary(acc) for p, acc in failing.items())
        else:
            c.status = "passed"
    if not benchmark:
        return
    for round_number in range(1, rounds + 1):
        for c in (c for c in candidates if c.status == "passed"):
            progress(f"select: benchmark {c.id} (round {round_number}/{rounds})")
            try:
                result = run_worker("measure", request(c, c.artifacts[0], benchmark), work / f"{c.id}.bench", timeout)
            except WorkerFailed as exc:
                c.status, c.reason = exc.status, f"benchmark: {exc}"
                continue
            c.rounds_ms.append(result["times_ms"])
            c.load_s = result["load_s"] if c.load_s is None else min(c.load_s, result["load_s"])
            c.peak_rss_mb = max(c.peak_rss_mb or 0.0, result["peak_rss_mb"] or 0.0) or None


def _gate_summary(accuracy: dict[str, Any]) -> str:
    parts = []
    for name, o in accuracy["outputs"].items():
        if not o["passed"]:
            detail = o.get("problem") or f"max abs error {o['max_abs']:.3g}, max rel error {o['max_rel']:.3g}"
            parts.append(f"output {name!r}: {detail}")
    return ", ".join(parts) + f" (atol={accuracy['atol']:g}, rtol={accuracy['rtol']:g})"


def _metric(c: Candidate, metric: str) -> float:
    if metric == "size":
        return float(c.size_bytes or 0)
    stats = c.latency
    assert stats is not None
    # throughput at a fixed batch is 1/mean latency; lower is better for both
    return stats["mean"] if metric == "throughput" else stats["median"]


def choose(candidates: list[Candidate], policy: dict[str, Any]) -> Candidate | None:
    """Apply the selection policy; mark the winner and say why every other lost."""
    passed = [c for c in candidates if c.status == "passed"]
    forced = policy.get("engine")
    if forced:
        winner = next((c for c in passed if c.engine == forced or c.id == forced), None)
        if winner is None:
            return None
        winner.status, winner.reason = "selected", f"forced by select.engine={forced}"
        for c in passed:
            if c is not winner:
                c.reason = f"not the forced engine {forced}"
        return winner
    if len(passed) == 1 and not passed[0].rounds_ms:
        passed[0].status, passed[0].reason = "selected", "the only compiler asked for; passed the accuracy gate"
        return passed[0]
    budget = policy.get("latency_budget_ms")
    if budget is not None:
        for c in passed:
            if c.latency and c.latency["median"] > budget:
                c.status, c.reason = "over-budget", f"median {c.latency['median']:.3f} ms exceeds the {budget:g} ms budget"
        passed = [c for c in passed if c.status == "passed"]
    if not passed:
        return None
    metric = policy.get("metric", "latency")
    best = min(_metric(c, metric) for c in passed)
    prefer = list(policy.get("prefer", []))
    rank = {name: i for i, name in enumerate(prefer)}
    tied = [c for c in passed if _metric(c, metric) <= best * (1 + TIE)]
    winner = min(tied, key=lambda c: (rank.get(c.engine, rank.get(c.id, len(prefer))), _metric(c, metric)))
    unit = "bytes" if metric == "size" else "ms"
    label = {"latency": "median latency", "throughput": "mean latency (throughput)", "size": "size"}[metric]
    winner.status = "selected"
    winner.reason = f"best {label} ({_metric(winner, metric):.4g} {unit}) of {len(passed)} passing candidates"
    if len(tied) > 1:
        winner.reason += f"; tie within {TIE:.0%} broken by prefer={prefer}"
    for c in passed:
        if c is not winner:
            ratio = _metric(c, metric) / max(_metric(winner, metric), 1e-12)
            c.reason = f"{label} {_metric(c, metric):.4g} {unit}, {ratio:.2f}x the winner"
    return winner
