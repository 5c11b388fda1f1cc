"""The packager's side of the benchmark lease (the controller's: orchestrator/leases.py).

Before timing anything, a packager whose controller grants leases says so on stdout and
waits for the grant file in its workspace; by then the controller holds the host's
lease and has paused the host's other packagers. The packager says when it is done, so
they resume as soon as the timing ends, not when the package is finished.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

from .job import LEASE_FILE, LEASE_MARKER


@contextlib.contextmanager
def benchmark_lease(asked: bool, wait_s: float, folder: Path = Path(".")) -> Iterator[dict[str, Any] | None]:
    """Hold the host's benchmark lease while the block runs; yields what the controller
    said (waited, paused) or, unasked, None. A lease that does not come within
    ``wait_s`` is recorded as not granted and the benchmark runs anyway."""
    if not asked:
        yield None
        return
    grant = folder / LEASE_FILE
    grant.unlink(missing_ok=True)
    print(f"{LEASE_MARKER}request", flush=True)
    deadline = time.monotonic() + wait_s
    said: dict[str, Any] | None = None
    while said is None and time.monotonic() < deadline:
        try:
            said = {"granted": True, **json.loads(grant.read_text())}
        except (OSError, ValueError):  # not there yet, or still being written
            time.sleep(0.02)
    try:
        yield said or {"granted": False, "why": f"no grant within {wait_s:g} s"}
    finally:
        print(f"{LEASE_MARKER}release", flush=True)
        grant.unlink(missing_ok=True)
