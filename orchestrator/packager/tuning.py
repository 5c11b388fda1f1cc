"""Runtime settings tuned on the build host and shipped (``select: {tune: true}``).

An engine's defaults are not its best on every model: thread count, onnxruntime's
execution mode, OpenVINO's performance hint and ncnn's memory layout each change
latency. For the leading candidates, every setting worth trying is measured against
the candidate as built in one interleaved tournament (the same rounds, confidence and
load record as the selection itself), and the best is written into that candidate's
artifacts, so the device runs what was measured. Only settings that cannot change the
results are tried (precision settings are variants, gated); settings the spec pins under
``device`` are never changed.

A setting ships only if it beats the candidate as built by more than the candidate
differs from itself: each leading candidate is measured twice as built (a control), and
the margin a setting must clear is the larger of the tie margin and the span of the
control's 95 % interval. Two copies of one package measured 6 % apart on this kind of
host, and a setting that "won" by less shipped slower than the defaults it replaced.
A tie keeps the settings as built.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from .ranking import compare
from .selection import TIE, Candidate, Measurement, benchmark_all, device_options, round_value, with_runtime

#: accuracy-neutral settings worth a try per engine (beside the thread counts)
TRIALS: dict[str, list[dict[str, Any]]] = {
    "onnxruntime": [{"execution_mode": "parallel"}],
    "openvino": [{"performance_hint": "THROUGHPUT"}],
    "mnn": [],
    "ncnn": [{"light_mode": False}, {"packing": False}],
}


def trials(c: Candidate, device: Mapping[str, Any], cores: int | None = None) -> list[dict[str, Any]]:
    """The settings to try on ``c`` besides its own: one thread and every core, unless the
    spec fixes the threads, and the engine's own trials minus what the spec pins."""
    pinned = set(device_options(device, c.engine))
    tried: list[dict[str, Any]] = []
    if "threads" not in pinned:
        tried += [{"threads": n} for n in sorted({1, cores or os.cpu_count() or 1})]
    return tried + [s for s in TRIALS.get(c.engine, []) if not set(s) & pinned]


def _with(c: Candidate, settings: dict[str, Any], label: str) -> Candidate:
    artifacts = copy.deepcopy(c.artifacts)
    with_runtime(artifacts, settings)
    return Candidate(label, c.compiler, c.engine, c.options, c.version, status="passed", artifacts=artifacts,
                     size_bytes=c.size_bytes, root=c.root, variant=c.variant, fixed_shapes=c.fixed_shapes)


#: the label suffixes of a candidate as built and of its second copy (the control)
AS_BUILT, CONTROL = "~as-built", "~as-built-again"


def noise_margin(values: Mapping[str, list[float]]) -> float:
    """The margin a setting must win by: the tie margin, or wider where a candidate as
    built and its control differ by more (the far end of their ratio's 95 % interval)."""
    margin = TIE
    for cid, again in values.items():
        if cid.endswith(CONTROL) and (built := values.get(cid.removesuffix(CONTROL) + AS_BUILT)):
            rounds = min(len(built), len(again))
            if rounds:
                found = compare(cid, [a / max(b, 1e-12) for a, b in zip(again[:rounds], built[:rounds])], TIE)
                margin = max(margin, found.high - 1, 1 / max(found.low, 1e-12) - 1)
    return margin


def tune(leading: list[Candidate], measurement: Measurement, work: Path, timeout: float, benchmark: dict[str, Any],
         device: Mapping[str, Any], metric: str, max_rounds: int,
         progress: Callable[[str], None]) -> tuple[Candidate, dict[str, Any], dict[str, Any]]:
    """Measure ``leading`` as built (twice) and with each trial setting; return the
    candidate to ship, the settings to give it, and the record for the manifest."""
    entries: list[tuple[Candidate, dict[str, Any], Candidate]] = []
    for c in leading:
        entries.append((c, {}, _with(c, {}, c.id + AS_BUILT)))
        entries.append((c, {}, _with(c, {}, c.id + CONTROL)))
        for number, settings in enumerate(trials(c, device), 1):
            entries.append((c, settings, _with(c, settings, f"{c.id}~{number}")))
    found = benchmark_all([e[2] for e in entries], measurement, work, timeout, benchmark,
                          max_rounds=max_rounds, metric=metric, progress=progress, margin=noise_margin)

    def figure(entry: tuple[Candidate, dict[str, Any], Candidate]) -> float:
        rounds = entry[2].rounds_ms
        return min(round_value(r, metric) for r in rounds) if rounds else float("inf")

    measured = [e for e in entries if e[2].status == "passed" and e[2].rounds_ms]
    margin = noise_margin({e[2].id: [round_value(r, metric) for r in e[2].rounds_ms] for e in measured})
    verdict = found.verdict
    as_built = [e for e in measured if not e[1]]
    best = min(measured, key=figure)
    if verdict is not None and verdict.decision != "undecided":
        best = next(e for e in measured if e[2].id == verdict.leader)
        tied_as_built = [e for e in as_built if e[2].id in set(verdict.tied)]
        if tied_as_built and verdict.decision == "tie":  # no setting beats the candidate as built
            best = min(tied_as_built, key=figure)
    elif as_built and figure(best) > min(figure(e) for e in as_built) / (1 + margin):
        best = min(as_built, key=figure)  # undecided: only a clear gain changes it
    record = {
        "tried": [{"candidate": c.id, "settings": settings, "status": clone.status,
                   "control": clone.id.endswith(CONTROL),
                   "figure_ms": round(figure((c, settings, clone)), 4) if clone.rounds_ms else None}
                  for c, settings, clone in entries],
        "margin": round(margin, 4),
        "chosen": {"candidate": best[0].id, "settings": best[1]},
        "benchmark": found.to_json(),
    }
    return best[0], best[1], record


def leading(candidates: list[Candidate], winner: Candidate, metric: str) -> list[Candidate]:
    """The winner and the best of the rest: tuning can reorder two close candidates."""
    from .selection import _metric

    rest = [c for c in candidates if c is not winner and c.status == "passed" and c.rounds_ms]
    return [winner] + sorted(rest, key=lambda c: _metric(c, metric))[:1]
