"""Regressions between two run summaries: slower, bigger, less accurate, newly failing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: relative growth that counts as a regression (measurements are noisy)
LATENCY_TOLERANCE = 0.10
SIZE_TOLERANCE = 0.05


@dataclass
class Regression:
    job: str
    kind: str  # latency | size | accuracy | failing
    before: Any
    after: Any

    def describe(self) -> str:
        if self.kind == "failing":
            return f"{self.job}: newly failing ({self.after})"
        delta = (self.after - self.before) / self.before if self.before else float("inf")
        return f"{self.job}: {self.kind} {self.before:.4g} -> {self.after:.4g} ({delta:+.0%})"


def regressions(current: dict[str, Any], previous: dict[str, Any]) -> list[Regression]:
    before = {j["job"]: j for j in previous.get("jobs", [])}
    found = []
    for job in current.get("jobs", []):
        old = before.get(job["job"])
        if old is None:
            continue
        if old["status"] == "built" and job["status"] == "failed":
            found.append(Regression(job["job"], "failing", old["status"], job.get("reason")))
            continue
        if job["status"] != "built" or old["status"] != "built":
            continue
        checks = (
            ("latency", "latency_ms", LATENCY_TOLERANCE),
            ("size", "size", SIZE_TOLERANCE),
        )
        for kind, key, tolerance in checks:
            a, b = old.get(key), job.get(key)
            if a and b and b > a * (1 + tolerance):
                found.append(Regression(job["job"], kind, a, b))
        a, b = old.get("max_abs_error"), job.get("max_abs_error")
        if a is not None and b is not None and b > max(a * 2, a + 1e-7):
            found.append(Regression(job["job"], "accuracy", a, b))
    return found


def deltas(current: dict[str, Any], previous: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per job: relative change in latency and size, absolute change in error."""
    before = {j["job"]: j for j in previous.get("jobs", [])}
    out: dict[str, dict[str, float | None]] = {}
    for job in current.get("jobs", []):
        old = before.get(job["job"])
        if not old:
            continue

        def rel(key: str) -> float | None:
            a, b = old.get(key), job.get(key)
            return (b - a) / a if a and b else None

        a, b = old.get("max_abs_error"), job.get("max_abs_error")
        out[job["job"]] = {"latency": rel("latency_ms"), "size": rel("size"),
                           "accuracy": (b - a) if a is not None and b is not None else None}
    return out
