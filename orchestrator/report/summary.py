"""``summary.json``: the machine-readable record of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..scheduler import JobRecord
from ..storage import write_atomic


def summary(records: list[JobRecord], run_id: str, inventory_source: str) -> dict[str, Any]:
    jobs = [r.to_json() for r in records]
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    return {
        "modelpack_version": __version__,
        "run_id": run_id,
        "inventory": inventory_source,
        "counts": counts,
        "jobs": jobs,
    }


def write_json(path: Path, data: Any, scratch: Path | None = None) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", scratch)
