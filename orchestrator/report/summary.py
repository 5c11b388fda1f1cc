"""``summary.json``: the machine-readable record of a run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .. import __version__
from ..scheduler import JobRecord


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


def write_atomic(path: Path, text: str, scratch: Path | None = None) -> None:
    """Write via a temporary file and a rename, so a reader never sees half a file.
    ``scratch`` (on the same filesystem) keeps even the temporary file out of sight."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=scratch or path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any, scratch: Path | None = None) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", scratch)
