"""Run set-up before any job starts: which hosts may take which jobs.

For the planned jobs: the eligible hosts from the inventory, one transport each, a
parallel probe of every (host, environment) pair the run needs (a Docker host builds a
missing image here, once), leftovers of crashed runs removed from the healthy hosts,
the emulation policy applied, and each host's environment id for the package cache key.
The CLI only parses arguments and prints; the scheduler only dispatches.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from .errors import InputError
from .inventory import Host, LoadedInventory, eligible_hosts
from .plan import PlannedJob
from .transports.base import HostStatus, Transport, TransportError


@dataclass
class Preflight:
    """What the scheduler is handed."""

    eligible: dict[str, list[Host]]
    transports: dict[str, Transport]
    #: host name -> why it failed its check; disabled for the whole run
    down: dict[str, str]
    #: (host, environment) pairs that run under emulation
    emulated: set[tuple[str, str]]
    environment_ids: dict[tuple[str, str], str | None]

    def cache_key(self, job: PlannedJob, host: str) -> str | None:
        """The package cache key of ``job`` built on ``host``; None when the host's
        environment has no identity (then the result is not cached)."""
        environment_id = self.environment_ids.get((host, job.target.environment))
        return job.cache_key(environment_id) if environment_id else None


def probe_all(transports: dict[str, Transport], environments: dict[str, list[str]]) -> dict[tuple[str, str], HostStatus]:
    """Probe every (host, environment) pair in parallel; a dead host costs one timeout.
    The transports are the run's own, so an SSH host's connection serves the whole run."""
    pairs = [(name, env) for name in transports for env in environments[name]]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(pairs)))) as pool:
        statuses = list(pool.map(lambda p: transports[p[0]].probe(p[1]), pairs))
    return dict(zip(pairs, statuses))


def prepare(jobs: list[PlannedJob], inventory: LoadedInventory, make_transport: Callable[[Host], Transport],
            keep_workspaces: bool, say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
            ) -> Preflight:
    """Set the run up; raises InputError when a job may run only under emulation and
    the inventory does not allow it."""
    eligible = {job.id: eligible_hosts(inventory, job.target, job.required_features) for job in jobs}
    used = {h.name: h for hosts in eligible.values() for h in hosts}
    transports = {name: make_transport(host) for name, host in used.items()}
    for transport in transports.values():
        transport.keep_workspaces = keep_workspaces

    environments: dict[str, list[str]] = {name: [] for name in used}
    for job in jobs:
        for host in eligible[job.id]:
            if job.target.environment not in environments[host.name]:
                environments[host.name].append(job.target.environment)
    health = probe_all(transports, environments)
    down = {name: status.detail for (name, _), status in health.items() if not status.reachable}
    for name, detail in down.items():
        say(f"modelpack: host {name} failed its preflight check and is disabled for this run: {detail}")
    for name, transport in transports.items():
        if name not in down:
            try:
                for leftover in transport.reap():
                    say(f"modelpack: removed {leftover} left by an earlier run on {name}")
            except TransportError as exc:  # leftovers are untidy, not fatal; the build goes on
                say(f"modelpack: could not look for leftovers on {name}: {exc}")
    emulated = {pair for pair, status in health.items() if status.reachable and status.emulated}
    for job in jobs:  # emulation only where the inventory allows it
        allowed = [h for h in eligible[job.id] if h.allow_emulation or (h.name, job.target.environment) not in emulated]
        if not allowed:
            raise InputError(inventory.source, "hosts", f"{job.id}: every host for {job.target.name} would run it"
                             f" under emulation and none has allow_emulation: true")
        eligible[job.id] = allowed
    environment_ids = {pair: status.facts.get("environment_id") for pair, status in health.items()}
    return Preflight(eligible, transports, down, emulated, environment_ids)
