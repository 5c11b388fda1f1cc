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

import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .causes import root_cause
from ..runtime.platforms import minimal_environment
from .compilers import Compiler
from .job import CompilerCall, JobTarget
from .hostload import Sample, contention, round_load
from .messages import CompileRequest, MeasureRequest, WorkerResult
from .ranking import MAX_ROUNDS, MIN_ROUNDS, Verdict, decide
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
    #: acceleration variant (None: the compiler's fp32 baseline)
    variant: str | None = None
    #: preparation steps the variant's transform needed
    preparation: list[str] = field(default_factory=list)
    #: task-level gate result (variants under a task gate): criterion, tensor, value, interval
    task_gate: dict[str, Any] | None = None
    #: the loss against the fp32 model on the held-out samples (variants)
    loss: dict[str, Any] | None = None
    #: where pre/post functions run: "graph" (fused) or "runtime" (NumPy fallback)
    functions: str | None = None
    #: comparison with the same compiler's fp32 baseline, once both are measured
    versus_baseline: dict[str, Any] | None = None
    #: the compiler call that made it
    call: CompilerCall | None = None
    #: the compiler's own remarks (e.g. a Core ML model left uncompiled, and why)
    notes: list[str] = field(default_factory=list)
    #: compiled from the fixed-shape model (the compiler needs fixed shapes)
    fixed_shapes: bool = False
    #: compiled from the folded model (its engine runs the graph as given)
    folded: bool = False
    #: its compile or gate ran out of time (not worth a second try at the same cost)
    timed_out: bool = False
    #: why this candidate runs only at the benchmark size, when the policy let it pass so
    static: str | None = None

    @property
    def latency(self) -> dict[str, float] | None:
        return latency_stats(self.rounds_ms) if self.rounds_ms else None

    def row(self, emulated: bool) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id, "compiler": self.compiler, "compiler_version": self.version, "engine": self.engine,
            "options": self.options, "status": self.status, "reason": self.reason,
            "accuracy": self.accuracy, "size_bytes": self.size_bytes,
        }
        if self.variant:
            row.update(variant=self.variant, preparation=self.preparation, task_gate=self.task_gate,
                       held_out=self.loss, versus_baseline=self.versus_baseline)
        if self.functions:
            row["functions"] = self.functions
        if self.notes:
            row["notes"] = self.notes
        if self.static:
            row["static_shapes"] = self.static
        if self.rounds_ms:
            row.update(latency_ms=self.latency, load_s=self.load_s, peak_rss_mb=self.peak_rss_mb, emulated=emulated)
        return row


class WorkerFailed(RuntimeError):
    def __init__(self, status: str, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.timed_out = timed_out


def run_worker(request: CompileRequest | MeasureRequest, folder: Path, timeout: float) -> dict[str, Any]:
    """Run one step in a worker process; what it found, or WorkerFailed with the reason
    (a timeout, a crash of the process, or the step's own error)."""
    kind = request.kind
    folder.mkdir(parents=True, exist_ok=True)
    request_path, result_path = folder / f"{kind}.request.json", folder / f"{kind}.result.json"
    request_path.write_text(request.to_json())
    result_path.unlink(missing_ok=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.packager.worker", kind, str(request_path), str(result_path)],
            capture_output=True, text=True, timeout=timeout, env=minimal_environment(),
        )
    except subprocess.TimeoutExpired:
        raise WorkerFailed("failed", f"{kind} timed out after {timeout:g} s", timed_out=True) from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise WorkerFailed("crashed", f"{kind} crashed the worker process ({name})")
    if not result_path.is_file():
        raise WorkerFailed("crashed", f"{kind} worker exited with code {proc.returncode}: {root_cause(proc.stderr)}")
    try:
        result = WorkerResult.from_json(result_path.read_text())
    except ValueError as exc:
        raise WorkerFailed("crashed", f"{kind} worker wrote no valid result: {exc}") from None
    if result.error is not None:
        raise WorkerFailed("failed", f"{kind} failed: {result.error}")
    return result.found


def _quiet(message: str) -> None:
    pass


@dataclass
class CompileSetting:
    """What every candidate of one compile pass shares."""

    model: Path
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    #: the model with every input at its benchmark size, for compilers that need that
    fixed_model: Path | None = None
    #: the dynamic model folded furthest, for compilers whose engine runs the graph as given
    folded_model: Path | None = None
    #: the inputs at a second checked size (None: the package has no dynamic dimension)
    alternate_inputs: list[dict[str, Any]] | None = None
    calibration: Path | None = None
    #: functions the runtime applies around the engine (recorded in each artifact)
    runtime_functions: dict[str, Any] | None = None
    #: "graph" or "runtime" when the package has functions
    functions: str | None = None
    #: appended to candidate ids (the runtime-functions fallback pass)
    suffix: str = ""
    #: the device's threads and engine settings (Job.device)
    device: dict[str, Any] = field(default_factory=dict)
    #: every compiler starts from ``fixed_model`` (the retry of those that failed on the dynamic one)
    fixed_for_all: bool = False


def device_options(device: Mapping[str, Any], engine: str) -> dict[str, Any]:
    """The runtime options an artifact of ``engine`` gets from the spec's ``device``: the
    thread count (every engine) and that engine's own settings."""
    options = dict((device.get("engines") or {}).get(engine) or {})
    if device.get("threads"):
        options["threads"] = int(device["threads"])
    return options


def with_runtime(artifacts: list[dict[str, Any]], options: Mapping[str, Any]) -> None:
    """Give every runnable artifact these runtime options: what it is measured with on
    the build host is what the package runtime applies on the device."""
    for artifact in artifacts:
        if artifact["role"] != "auxiliary":
            artifact["runtime"] = {**artifact.get("runtime", {}), **options}


def candidate_id(call: CompilerCall, seen: dict[str, int]) -> str:
    if call.variant:
        return f"{call.name}+{call.variant}"
    seen[call.name] = seen.get(call.name, 0) + 1
    return call.name if seen[call.name] == 1 else f"{call.name}#{seen[call.name]}"


def compile_all(
    calls: list[CompilerCall], compilers: dict[str, Compiler], target: JobTarget, setting: CompileSetting,
    work: Path, timeout: float, progress: Callable[[str], None] = _quiet,
) -> list[Candidate]:
    """One candidate per compiler call. Unsupported, unavailable and failed ones stay in
    the list with their reason: nothing is dropped silently."""
    candidates = []
    seen: dict[str, int] = {}
    for number, call in enumerate(calls, 1):
        compiler = compilers[call.name]
        cid = candidate_id(call, seen) + setting.suffix
        progress(f"compile: {cid} ({number}/{len(calls)})")
        fixed = (compiler.fixed_shapes or setting.fixed_for_all) and setting.fixed_model is not None
        folded = not fixed and compiler.folded and setting.folded_model is not None
        candidate = Candidate(cid, call.name, compiler.engine, dict(call.options), version=compiler.version(),
                              variant=call.variant, functions=setting.functions, call=call, fixed_shapes=fixed,
                              folded=folded)
        candidates.append(candidate)
        if target.name not in compiler.targets:
            candidate.status, candidate.reason = "unsupported", f"{call.name} cannot build for {target.name}"
            continue
        if candidate.version is None:
            candidate.status, candidate.reason = "unavailable", (
                f"{call.name} is not installed on this host (needs {', '.join(compiler.requires)})")
            continue
        folder = cid.replace("#", "-").replace("+", "_")
        root = work / folder
        if root.exists():
            shutil.rmtree(root)
        model = setting.fixed_model if fixed else setting.folded_model if folded else setting.model
        request = CompileRequest(call.name, call.options, str(model), str(root), vars(target), setting.inputs,
                                 setting.outputs, None if fixed else setting.alternate_inputs, call.variant,
                                 str(setting.calibration) if setting.calibration else None)
        try:
            result = run_worker(request, work / f"{folder}.worker", timeout)
        except WorkerFailed as exc:
            candidate.status, candidate.reason, candidate.timed_out = exc.status, str(exc), exc.timed_out
            continue
        candidate.root = root
        candidate.preparation = result.get("preparation", [])
        candidate.notes = result.get("notes", [])
        candidate.artifacts = result["artifacts"]
        shipped = device_options(setting.device, compiler.engine)
        if setting.runtime_functions:
            shipped["functions"] = setting.runtime_functions
        with_runtime(candidate.artifacts, shipped)
        candidate.reproducible = result["reproducible"]
        candidate.size_bytes = sum((root / a["path"]).stat().st_size for a in candidate.artifacts)
        candidate.status = "compiled"
    return candidates


@dataclass
class Measurement:
    """What the gate and the benchmark run candidates on."""

    #: the golden samples at each checked size, benchmark size first:
    #: [{"point", "inputs": {name: path}, "reference": {name: path}}]
    sizes: list[dict[str, Any]]
    #: the accuracy gate (runtime.checks.Tolerance as JSON)
    tolerance: dict[str, Any]
    #: "reject" or "allow": what happens to a candidate that runs only at the benchmark size
    fixed_shapes: str = "reject"
    #: task-level gate for variants ({} = tolerance), its evaluation set and metric module
    gate: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, str] | None = None
    metric_file: str | None = None
    #: what the gates read (evaluate.GateTensors as JSON)
    tensors: dict[str, Any] = field(default_factory=dict)
    #: what they read of a candidate whose functions the runtime applies (None: ``tensors``)
    runtime_tensors: dict[str, Any] | None = None

    def request(self, c: Candidate, artifact: dict[str, Any], bench: dict[str, Any] | None) -> MeasureRequest:
        sizes = self.sizes[:1] if (bench or c.fixed_shapes) else self.sizes
        judged = bool(c.variant) and not bench
        tensors = self.runtime_tensors if c.functions == "runtime" and self.runtime_tensors else self.tensors
        return MeasureRequest(str(c.root), artifact, sizes, self.tolerance, bench, c.variant,
                              self.gate if judged else None, self.evaluation if judged else None,
                              self.metric_file, tensors)


def gate_all(candidates: list[Candidate], measurement: Measurement, work: Path, timeout: float,
             progress: Callable[[str], None] = _quiet) -> None:
    """Gate every compiled candidate: per-output tolerance on the golden samples, or
    for variants under a task-level gate, that criterion (tolerance figures still recorded)."""
    for c in (c for c in candidates if c.status == "compiled"):
        progress(f"select: accuracy gate {c.id}")
        runnable = [a for a in c.artifacts if a["role"] in ("primary", "alternate")]
        folder = work / f"{c.id.replace('+', '_')}.gate"
        try:
            checks = {a["path"]: run_worker(measurement.request(c, a, None), folder, timeout)
                      for a in runnable}
        except WorkerFailed as exc:
            c.status, c.reason, c.timed_out = exc.status, str(exc), exc.timed_out
            continue
        c.accuracy = checks[runnable[0]["path"]]["accuracy"]
        c.loss = checks[runnable[0]["path"]].get("held_out")
        task = {p: r["task_gate"] for p, r in checks.items() if r.get("task_gate")}
        if task:
            c.task_gate = task[runnable[0]["path"]]
            failing_task = {p: t for p, t in task.items() if not t["passed"]}
            if failing_task:
                c.status = "rejected"
                c.reason = "; ".join(f"{p}: {_task_summary(t)}" for p, t in failing_task.items())
            else:
                c.status = "passed"
                _check_sizes(c, checks, measurement, "ran")
            continue
        failing = {p: r["accuracy"] for p, r in checks.items() if not r["accuracy"]["passed"]}
        if failing:
            c.status = "rejected"
            c.reason = "; ".join(f"{p}: " + _gate_summary(acc) for p, acc in failing.items())
        else:
            c.status = "passed"
            _check_sizes(c, checks, measurement, "passed")


def _check_sizes(c: Candidate, checks: dict[str, dict[str, Any]], measurement: Measurement, key: str) -> None:
    """A candidate that passed at the benchmark size must also pass at every other
    checked size (``key``: "passed" within the tolerance, or for task-gated variants,
    "ran" with the right output shapes). One that cannot is rejected, or with
    ``fixed_shapes: allow`` kept for packaging at the benchmark size, and says so."""
    if len(measurement.sizes) < 2:
        return
    if c.fixed_shapes:
        why = f"{c.compiler} was compiled for fixed input shapes"
    else:
        failing = [(path, point, size.get("problem")) for path, r in checks.items()
                   for point, size in r["accuracy"].get("sizes", {}).items() if not size[key]]
        if not failing:
            return
        _, point, problem = failing[0]
        why = f"fails at the {point} size: {problem}"
    if measurement.fixed_shapes == "allow":
        c.static = f"packaged at the benchmark size only ({why})"
        return
    c.status = "rejected"
    c.reason = f"runs only at the benchmark size ({why}); fixed_shapes: allow would package it at that size"


@dataclass
class Benchmark:
    """What the measuring found: the verdict (None with fewer than two candidates), the
    load each round saw, and the round cap it ran under."""

    verdict: Verdict | None
    load: list[dict[str, Any]]
    max_rounds: int
    #: when the timing began and ended (seconds since the epoch, the host's clock)
    window: tuple[float, float] = (0.0, 0.0)
    #: the host's benchmark lease as the controller granted it (None: not asked for)
    lease: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = self.verdict.to_json() if self.verdict else {"decision": "single", "rounds": len(self.load)}
        return {**found, "max_rounds": self.max_rounds, "contention": contention(self.load), "lease": self.lease,
                "window": [round(self.window[0], 3), round(self.window[1], 3)], "load": self.load}


def round_value(times_ms: list[float], metric: str) -> float:
    """One round's figure for the metric: its median latency, or its mean (throughput)."""
    return statistics.fmean(times_ms) if metric == "throughput" else statistics.median(times_ms)


def benchmark_all(candidates: list[Candidate], measurement: Measurement, work: Path, timeout: float,
                  benchmark: dict[str, Any], rounds: int | None = None, max_rounds: int = MAX_ROUNDS,
                  metric: str = "latency", progress: Callable[[str], None] = _quiet,
                  margin: Callable[[Mapping[str, list[float]]], float] = lambda values: TIE) -> Benchmark:
    """Benchmark the candidates that passed, in interleaved rounds so noise hits them
    alike, until the ranking is decided at 95 % confidence (see ranking.py) or
    ``max_rounds`` is reached; ``rounds`` fixes the count instead. ``margin`` gives the
    tie margin from the values so far (tuning widens it to its control's noise). The
    order of the candidates turns by one each round, so no candidate always runs first
    (after the load sample) or last. Each round's host load is recorded beside it."""
    cap = rounds or max_rounds
    loads: list[dict[str, Any]] = []
    verdict = None
    started = time.time()
    for round_number in range(1, cap + 1):
        before = Sample.now()
        passed = [c for c in candidates if c.status == "passed"]
        turn = (round_number - 1) % max(len(passed), 1)
        for c in passed[turn:] + passed[:turn]:
            progress(f"select: benchmark {c.id} (round {round_number}, at most {cap})")
            try:
                result = run_worker(measurement.request(c, c.artifacts[0], benchmark),
                                    work / f"{c.id.replace('+', '_')}.bench", timeout)
            except WorkerFailed as exc:
                c.status, c.reason = exc.status, f"benchmark: {exc}"
                continue
            c.rounds_ms.append(result["times_ms"])
            c.load_s = result["load_s"] if c.load_s is None else min(c.load_s, result["load_s"])
            c.peak_rss_mb = max(c.peak_rss_mb or 0.0, result["peak_rss_mb"] or 0.0) or None
        loads.append(round_load(before, Sample.now()))
        values = {c.id: [round_value(r, metric) for r in c.rounds_ms]
                  for c in candidates if c.status == "passed" and c.rounds_ms}
        verdict = decide(values, margin(values)) if len(values) > 1 else None
        if rounds is None and round_number >= MIN_ROUNDS and (verdict is None or verdict.decision != "undecided"):
            break
    return Benchmark(verdict, loads, cap, (started, time.time()))


def compare_with_baselines(candidates: list[Candidate]) -> None:
    """Each measured variant against the fp32 baseline of its compiler, same host, same run."""
    baselines = {c.compiler: c for c in candidates if c.variant is None and c.rounds_ms}
    for c in candidates:
        base = baselines.get(c.compiler)
        if not c.variant or base is None:
            continue
        record: dict[str, Any] = {"baseline": base.id}
        if c.size_bytes and base.size_bytes:
            record["size_ratio"] = round(c.size_bytes / base.size_bytes, 4)
        if c.rounds_ms:
            record["speedup"] = round(base.latency["median"] / max(c.latency["median"], 1e-9), 4)
        c.versus_baseline = record


def _task_summary(verdict: dict[str, Any]) -> str:
    """Why a variant failed its task gate, in one line naming the tensor and samples."""
    if verdict.get("undecided"):
        return f"{verdict['criterion']} undecided on {verdict['tensor']}: {verdict['undecided']}"
    measured = (f"value {verdict['value']:g}" + (f", drop {verdict['drop']:g}" if "drop" in verdict else "")
                + (f", 95 % interval {verdict['interval_95'][0]:g}..{verdict['interval_95'][1]:g}"
                   if "interval_95" in verdict else ""))
    counted = verdict.get("counted") or f"{verdict.get('samples')} held-out samples"
    return f"{verdict['criterion']} failed on {verdict['tensor']} ({measured}; {counted})"


def _gate_summary(accuracy: dict[str, Any]) -> str:
    held = accuracy.get("held_out") or {}
    if held and not held["passed"] and all(o["passed"] for o in accuracy["outputs"].values()):
        return (f"the tolerance fails on {held['failing']} of {held['samples']} held-out samples"
                f" ({held['first_failure']})")
    parts = []
    for name, o in accuracy["outputs"].items():
        if not o["passed"]:
            detail = o.get("problem") or f"max abs error {o['max_abs']:.3g}, max rel error {o['max_rel']:.3g}"
            parts.append(f"output {name!r}: {detail} (atol={o['atol']:g}, rtol={o['rtol']:g})")
    return ", ".join(parts)


def _metric(c: Candidate, metric: str) -> float:
    if metric == "size":
        return float(c.size_bytes or 0)
    stats = c.latency
    assert stats is not None
    # throughput at a fixed batch is 1/mean latency; lower is better for both
    return stats["mean"] if metric == "throughput" else stats["median"]


def choose(candidates: list[Candidate], policy: dict[str, Any], verdict: Verdict | None = None) -> Candidate | None:
    """Apply the selection policy; mark the winner and say why every other lost. With
    the benchmark's ``verdict``, a decided leader wins and a decided tie goes to
    ``prefer``, then to the smaller artifact; an undecided one falls back to the best
    figures, and the reason says it was undecided."""
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
    ids = {c.id for c in passed}
    decided = (verdict is not None and metric != "size" and verdict.decision != "undecided"
               and ids == {verdict.leader, *(c.other for c in verdict.comparisons)})
    if decided:
        assert verdict is not None
        tied = [c for c in passed if c.id in verdict.tied]
    else:
        tied = [c for c in passed if _metric(c, metric) <= best * (1 + TIE)]
    winner = min(tied, key=lambda c: (rank.get(c.engine, rank.get(c.id, len(prefer))), c.size_bytes or 0,
                                      _metric(c, metric)))
    unit = "bytes" if metric == "size" else "ms"
    label = {"latency": "median latency", "throughput": "mean latency (throughput)", "size": "size"}[metric]
    winner.status = "selected"
    winner.reason = f"best {label} ({_metric(winner, metric):.4g} {unit}) of {len(passed)} passing candidates"
    if decided and verdict is not None and verdict.decision == "leader":
        winner.reason += (f"; ahead of every other by more than {TIE:.0%} at 95 % confidence after"
                          f" {verdict.rounds} rounds")
    elif len(tied) > 1:
        how = f"at 95 % confidence after {verdict.rounds} rounds" if decided and verdict else f"within {TIE:.0%}"
        winner.reason += f"; tie ({how}) broken by prefer={prefer}, then the smaller artifact"
    if verdict is not None and verdict.decision == "undecided" and metric != "size":
        winner.reason += f"; the ranking stayed undecided after {verdict.rounds} rounds (low confidence)"
    for c in passed:
        if c is not winner:
            ratio = _metric(c, metric) / max(_metric(winner, metric), 1e-12)
            c.reason = f"{label} {_metric(c, metric):.4g} {unit}, {ratio:.2f}x the winner"
    return winner
