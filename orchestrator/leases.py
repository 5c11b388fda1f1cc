"""Benchmark leases: one benchmark at a time per build host, the host's other packaging
paused meanwhile.

Why: a nightly runs several jobs per host (``slots``), so every host is busy when a test
script benchmarks, and contention does not hit engines alike: a multi-threaded engine
loses more on a shared core than a single-threaded one, so a busy host can ship the
engine that is slower on the quiet device (measured: 1.24x). More rounds do not fix a
ranking that load distorts; taking the load away does.

How: the packager asks (a :data:`LEASE_MARKER` line) and waits; the controller takes
this host's lock (its own jobs), then the transport's lease (other controllers using
the same host: see ``Transport.benchmark_lease``), freezes the host's other workspaces
that are running a packager (``docker pause``; SIGSTOP of their process groups), its
own and, where the transport can see them, other controllers' (``others_paused``), and
tells the packager by pushing :data:`LEASE_FILE` into its workspace. When the packager
says it is done, or its run ends however it ends, everything is resumed and released.
"""

from __future__ import annotations

import collections
import contextlib
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .packager.job import LEASE_FILE
from .transports.base import Transport, Workspace


class BenchmarkLeases:
    """The controller's side of the lease for every host it uses."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        #: per machine (Transport.machine), the workspaces whose packager is running now
        self._running: dict[str, set[Workspace]] = collections.defaultdict(set)

    @contextlib.contextmanager
    def packaging(self, transport: Transport, workspace: Workspace) -> Iterator[None]:
        """Mark ``workspace`` as running a packager (one a benchmark may pause)."""
        with self._guard:
            self._running[transport.machine].add(workspace)
        try:
            yield
        finally:
            with self._guard:
                self._running[transport.machine].discard(workspace)

    @contextlib.contextmanager
    def hold(self, transport: Transport, workspace: Workspace, holder: str) -> Iterator[dict[str, Any]]:
        """Hold ``transport``'s host for ``workspace``'s benchmark; yields what was done
        (how long it waited, how many workspaces were paused)."""
        asked = time.monotonic()
        with self._locks[transport.machine], transport.benchmark_lease(holder):
            with self._guard:
                mine = {workspace, *self._running[transport.machine]}
            others = [w for w in mine if w is not workspace]
            paused = [w for w in others if w.pause()]
            try:
                with transport.others_paused(mine) as foreign:
                    yield {"waited_s": round(time.monotonic() - asked, 3), "paused": len(paused),
                           "not_pausable": len(others) - len(paused), "paused_other_controllers": foreign}
            finally:
                for other in paused:
                    other.resume()


class LeaseClient:
    """One attempt's conversation with its packager about the lease: started by the
    packager's request line, ended by its release line or by the end of the run."""

    def __init__(self, leases: BenchmarkLeases, transport: Transport, workspace: Workspace, holder: str) -> None:
        self._leases, self._transport, self._workspace, self._holder = leases, transport, workspace, holder
        self._held: contextlib.ExitStack | None = None

    def request(self) -> None:
        stack = contextlib.ExitStack()
        granted = stack.enter_context(self._leases.hold(self._transport, self._workspace, self._holder))
        self._held = stack
        with tempfile.TemporaryDirectory(prefix="modelpack-lease-") as tmp:
            grant = Path(tmp) / LEASE_FILE
            grant.write_text(json.dumps({**granted, "host": self._transport.name}))
            try:
                self._workspace.push({LEASE_FILE: grant})
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()
