"""How busy the build host was while a benchmark round ran.

A ranking measured on a busy host can differ from the one a quiet device sees, and not
all load can be paused (other tenants of a VM, processes modelpack did not start). So each
round records what could be read: the 1-minute load average, the share of CPU time the
hypervisor stole (Linux /proc/stat), and a fixed calibration loop timed before and
after the round, whose slowdown against the quietest round shows contention directly.
Anything unreadable on this OS is None, never a guess.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


def calibration_ms() -> float:
    """A fixed, single-threaded piece of CPU work, timed: slower means contended."""
    started = time.perf_counter()
    total = 0
    for i in range(200_000):
        total += i * i % 7
    return (time.perf_counter() - started) * 1e3


def _cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) CPU time since boot, from Linux's /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


@dataclass(frozen=True)
class Sample:
    at: float
    calibration_ms: float
    jiffies: tuple[int, int] | None

    @classmethod
    def now(cls) -> "Sample":
        return cls(time.monotonic(), calibration_ms(), _cpu_jiffies())


def round_load(before: Sample, after: Sample) -> dict[str, object]:
    """What one round saw, between two samples."""
    steal = None
    if before.jiffies and after.jiffies and after.jiffies[1] > before.jiffies[1]:
        steal = round(100 * (after.jiffies[0] - before.jiffies[0]) / (after.jiffies[1] - before.jiffies[1]), 2)
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows has no load average
        load = None
    return {"loadavg_1m": load, "steal_pct": steal,
            "calibration_ms": [round(before.calibration_ms, 3), round(after.calibration_ms, 3)],
            "seconds": round(after.at - before.at, 3)}


def contention(rounds: list[dict[str, object]]) -> float | None:
    """The worst round's calibration time over the quietest one's (1.0: no contention)."""
    times = [max(r["calibration_ms"]) for r in rounds if r.get("calibration_ms")]  # type: ignore[type-var]
    return round(max(times) / min(times), 3) if times and min(times) > 0 else None
