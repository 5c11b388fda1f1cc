"""Deciding a benchmark: which candidate leads, how sure that is, and when to stop.

Candidates are measured in interleaved rounds, so whatever disturbs one round (another
job, a frequency change, a noisy neighbour) hits every candidate of that round alike.
Comparing each candidate with the leader round by round, as the ratio of their round
values, cancels much of it; the spread of those ratios over the rounds gives a 95 %
confidence interval for the true ratio (Student's t on the log ratios). Measuring stops
as soon as every other candidate is, at that confidence, either slower than the leader
by more than the tie margin or tied with it; at the round cap the decision is
"undecided" and the manifest says so. More rounds under load do not fix a ranking that
load distorts (contention hurts a multi-threaded engine more than a single-threaded
one), which is why the per-round load is recorded beside it (see hostload.py).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

#: rounds before a decision may stop the measuring, and the default cap (the old fixed
#: count was 5: a decided ranking now costs 3 rounds, an undecided one 6)
MIN_ROUNDS = 3
MAX_ROUNDS = 6

#: two-sided 95 % critical values of Student's t by degrees of freedom (larger: 2.0)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(degrees: int) -> float:
    return _T95[max(d for d in _T95 if d <= degrees)] if degrees <= 30 else 2.0


@dataclass(frozen=True)
class Comparison:
    """One candidate against the leader: their ratio (>1: slower) and its 95 % interval."""

    other: str
    ratio: float
    low: float
    high: float
    verdict: str  # slower | tied | unclear

    def to_json(self) -> dict[str, object]:
        return {"candidate": self.other, "ratio": round(self.ratio, 4),
                "interval_95": [round(self.low, 4), round(self.high, 4)], "verdict": self.verdict}


@dataclass(frozen=True)
class Verdict:
    """Where the measuring stands: ``leader`` (every other is slower), ``tie`` (the others
    are slower or tied, at least one tied: ``prefer`` then the smaller artifact decide),
    or ``undecided``."""

    decision: str
    leader: str
    rounds: int
    comparisons: tuple[Comparison, ...]

    @property
    def tied(self) -> list[str]:
        return [self.leader] + [c.other for c in self.comparisons if c.verdict == "tied"]

    def to_json(self) -> dict[str, object]:
        return {"decision": self.decision, "confidence": 0.95, "leader": self.leader, "rounds": self.rounds,
                "versus_leader": [c.to_json() for c in self.comparisons]}


def compare(other: str, ratios: list[float], tie: float) -> Comparison:
    logs = [math.log(r) for r in ratios]
    centre = statistics.fmean(logs)
    half = t95(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else math.inf
    low, high = math.exp(centre - half), math.exp(centre + half)
    if low > 1 + tie:
        verdict = "slower"
    elif low >= 1 / (1 + tie) and high <= 1 + tie:
        verdict = "tied"
    else:
        verdict = "unclear"
    return Comparison(other, math.exp(centre), low, high, verdict)


def decide(values: dict[str, list[float]], tie: float) -> Verdict:
    """The verdict on candidates' per-round values (lower is better; every list holds the
    same rounds, in order). The leader has the lowest geometric mean."""
    rounds = min(len(v) for v in values.values())
    paired = {cid: [max(x, 1e-12) for x in v[:rounds]] for cid, v in values.items()}
    leader = min(paired, key=lambda cid: (statistics.fmean(math.log(x) for x in paired[cid]), cid))
    comparisons = tuple(compare(cid, [a / b for a, b in zip(v, paired[leader])], tie)
                        for cid, v in sorted(paired.items()) if cid != leader)
    verdicts = {c.verdict for c in comparisons}
    if "unclear" in verdicts or not comparisons:
        decision = "undecided" if comparisons else "leader"
    else:
        decision = "tie" if "tied" in verdicts else "leader"
    return Verdict(decision, leader, rounds, comparisons)
