"""Dispatch: jobs onto eligible hosts within their slots, with failover and cancellation.

The scheduler knows jobs and hosts and treats transports and the packager as black
boxes. An infrastructure failure disables the host for the rest of the run (a circuit
breaker: a dead host costs one attempt, not one per job) and the job moves to another
eligible host, up to ``max_attempts``. A package failure is final. Cancelling closes
every open workspace, which removes containers and unblocks running commands.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from .attest import Attested
from .cache import PackageCache
from .collect import publish, zip_from_archive
from .execute import Attempt, AttemptStatus, StageTimeouts, run_attempt
from .inventory import Host
from .leases import BenchmarkLeases
from .plan import PlannedJob
from .transports.base import Transport, Workspace


#: how much longer a packaging stage may take on an emulated host
EMULATION_SLOWDOWN = 10


@dataclass
class JobRecord:
    job: PlannedJob
    status: str = "pending"  # pending | running | built | failed | cancelled
    failure: AttemptStatus | None = None  # INFRASTRUCTURE or PACKAGE
    reason: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    package: Path | None = None
    #: the package's .zip twin (Windows targets that asked for one)
    zip: Path | None = None
    sha256: str | None = None
    manifest: dict[str, Any] | None = None
    cached: bool = False
    #: the release attestations added before publishing, if any
    attested: Attested | None = None
    started: float | None = None
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        manifest = self.manifest if self.status == "built" else None
        return {
            "job": self.job.id,
            "name": self.job.spec.spec.name,
            "version": self.job.spec.spec.version,
            "spec": str(self.job.spec.path),
            "target": self.job.target.name,
            "status": self.status,
            "failure": self.failure,
            "reason": self.reason,
            "host": self.attempts[-1].host if self.attempts else None,
            "attempts": [a.to_json() for a in self.attempts],
            "package": str(self.package) if self.package else None,
            "zip": str(self.zip) if self.zip else None,
            "sha256": self.sha256 if manifest else None,
            "cached": self.cached,
            "size": self.package.stat().st_size if self.package and self.package.exists() else None,
            "seconds": round(self.finished - self.started, 3) if self.started and self.finished else None,
            "signer": self.attested.signer if self.attested and manifest else None,
            "attestations": self.attested.files if self.attested and manifest else [],
            **_package_facts(manifest),
        }


def _package_facts(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """What reports need from a built package's manifest: the engine it ships and the
    candidates the test script weighed (latency and worst accuracy error each)."""
    if not manifest:
        return {"engine": None, "latency_ms": None, "max_abs_error": None, "emulated": None, "candidates": []}
    rows = []
    for c in manifest.get("candidates", []):
        outputs = ((c.get("accuracy") or {}).get("outputs") or {}).values()
        errors = [o["max_abs"] for o in outputs if o.get("max_abs") is not None]
        latency = c.get("latency_ms") or {}
        # a candidate packaged at one size under `fixed_shapes: allow` says so wherever it is listed
        reason = "; ".join(part for part in (c.get("reason"), c.get("static_shapes")) if part) or None
        rows.append({"id": c["id"], "engine": c["engine"], "status": c["status"], "reason": reason,
                     "median_ms": latency.get("median"), "p90_ms": latency.get("p90"),
                     "spread_ms": latency.get("spread"), "max_abs_error": max(errors) if errors else None,
                     "size_bytes": c.get("size_bytes"), "emulated": bool(c.get("emulated")),
                     "held_out": _held_out_summary(c.get("held_out"), c.get("versus_baseline"))})
    selected = next((r for r in rows if r["status"] == "selected"), None)
    return {
        "engine": next(iter(manifest.get("engines", {})), None),
        "selected": manifest.get("selection", {}).get("selected"),
        "latency_ms": selected["median_ms"] if selected else None,
        "max_abs_error": selected["max_abs_error"] if selected else None,
        "emulated": bool(manifest.get("selection", {}).get("emulated")),
        "candidates": rows,
    }


def _held_out_summary(loss: dict[str, Any] | None, versus: dict[str, Any] | None) -> str | None:
    """A variant's loss against fp32 on the held-out samples, as one line for reports:
    the task figures users read (top-1, top-5, box recall), the worst errors, the speed-up."""
    if not loss:
        return None
    parts = []
    for name, o in loss.get("outputs", {}).items():
        figures = [f"{label} {o[key]:.3g}" for key, label in (("top1_agreement", "top-1"), ("top5_overlap", "top-5"),
                                                               ("sequence_agreement", "per-step"))
                   if o.get(key) is not None]
        if o.get("max_abs") is not None:
            figures.append(f"max abs {o['max_abs']:.3g} ({o['max_rel_to_range'] or 0:.1%} of range)")
        parts.append(f"{name}: {', '.join(figures) or o.get('problem', '')}")
    if (loss.get("box_recall") or {}).get("value") is not None:
        parts.append(f"box recall {loss['box_recall']['value']:.3g}")
    if (versus or {}).get("speedup"):
        parts.append(f"{versus['speedup']:.2f}x speed")
    return f"{'; '.join(parts)} (n={loss['samples']})"


class Events(Protocol):
    def job_update(self, record: JobRecord, host: str | None, stage: str) -> None: ...

    def job_log(self, record: JobRecord, host: str | None, line: str) -> None: ...


class _NoEvents:
    def job_update(self, record: JobRecord, host: str | None, stage: str) -> None:
        pass

    def job_log(self, record: JobRecord, host: str | None, line: str) -> None:
        pass


@dataclass
class _HostState:
    host: Host
    transport: Transport
    running: int = 0
    disabled: str | None = None
    #: until one attempt has reached the packaging stage (connected, files pushed), a host
    #: gets one job at a time: a dead host then costs exactly one attempt, however many
    #: slots it declares
    proven: bool = False

    @property
    def capacity(self) -> int:
        return self.host.slots if self.proven else 1


class Scheduler:
    def __init__(
        self,
        jobs: list[PlannedJob],
        eligible: dict[str, list[Host]],
        transports: dict[str, Transport],
        out_dir: Path,
        staging: Path,
        run_labels: dict[str, str],
        events: Events | None = None,
        timeouts: StageTimeouts = StageTimeouts(),
        max_attempts: int = 3,
        max_parallel: int | None = None,
        disabled: dict[str, str] | None = None,
        cache: PackageCache | None = None,
        cache_key_for: Callable[[PlannedJob, str], str | None] | None = None,
        rebuild: bool = False,
        emulated: set[tuple[str, str]] | None = None,
        attest: Callable[[PlannedJob, Path], Attested] | None = None,
    ) -> None:
        self.records = [JobRecord(job) for job in jobs]
        self._eligible = eligible
        self._hosts = {name: _HostState(t.host, t, disabled=(disabled or {}).get(name))
                       for name, t in transports.items()}
        self._out_dir = out_dir
        self._staging = staging
        #: receives progress; may be set after construction (the console needs the records)
        self.events: Events = events or _NoEvents()
        self._labels = run_labels
        self._timeouts = timeouts
        self._max_attempts = max_attempts
        self._cache = cache
        self._key_for = cache_key_for or (lambda job, host: None)
        self._rebuild = rebuild
        #: (host, environment) pairs that run under emulation: used only when no native
        #: host is free, and given longer to package
        self._emulated = emulated or set()
        #: adds release attestations (provenance, BOM, signature) to a verified package
        #: in staging (attest.py); None publishes it as built
        self._attest = attest
        total_slots = sum(h.host.slots for h in self._hosts.values())
        self._parallel = max(1, min(len(jobs), total_slots, max_parallel or total_slots))
        self._cond = threading.Condition()
        self._open: set[Workspace] = set()
        #: one benchmark at a time per host, the host's other packagers paused meanwhile
        self._leases = BenchmarkLeases()
        self.cancelled = threading.Event()
        #: held while publishing and while cancelling: once cancel() returns, nothing more
        #: reaches --out, and a package being published is published whole
        self._publishing = threading.Lock()

    # -- host choice -------------------------------------------------------------
    def _acquire(self, job: PlannedJob, tried: set[str]) -> _HostState | None:
        """Block until an eligible, healthy, untried host has a free slot; None when
        no such host is left or the run was cancelled."""
        with self._cond:
            while True:
                if self.cancelled.is_set():
                    return None
                candidates = [
                    self._hosts[h.name] for h in self._eligible[job.id]
                    if h.name not in tried and not self._hosts[h.name].disabled
                ]
                if not candidates:
                    return None
                free = [c for c in candidates if c.running < c.capacity]
                native_free = [c for c in free if not self._is_emulated(c.host.name, job)]
                if free:
                    pool = native_free or free  # a free native host first; emulation rather than waiting
                    best = min(pool, key=lambda c: (c.running / c.host.slots / c.host.speed, -c.host.speed))
                    best.running += 1
                    return best
                self._cond.wait()

    def _is_emulated(self, host: str, job: PlannedJob) -> bool:
        return (host, job.target.environment) in self._emulated

    def _release(self, state: _HostState, failure: str | None) -> None:
        with self._cond:
            state.running -= 1
            if failure and not state.disabled:
                state.disabled = failure
            elif not failure:
                state.proven = True
            self._cond.notify_all()

    def _on_stage(self, record: JobRecord, host: str, state: _HostState, stage: str) -> None:
        """A host that has taken a workspace and the job's files is alive: from then on
        it gets all its slots, without waiting for the first job to finish."""
        if stage.startswith("package") and not state.proven:
            with self._cond:
                state.proven = True
                self._cond.notify_all()
        self.events.job_update(record, host, stage)

    # -- workspaces ----------------------------------------------------------------
    def _track(self, workspace: Workspace) -> None:
        with self._cond:
            self._open.add(workspace)
        if self.cancelled.is_set():
            workspace.close()

    def cancel(self) -> None:
        """Stop dispatching and destroy every open workspace (containers included)."""
        with self._publishing:
            self.cancelled.set()
        with self._cond:
            open_now = list(self._open)
            self._cond.notify_all()
        for workspace in open_now:
            workspace.close()

    # -- cache -----------------------------------------------------------------------
    def _from_cache(self, record: JobRecord) -> bool:
        """Republish a verified cached package built in an environment an eligible,
        healthy host has now; touches no host."""
        if self._cache is None or self._rebuild:
            return False
        for host in self._eligible[record.job.id]:
            if self._hosts[host.name].disabled:
                continue
            key = self._key_for(record.job, host.name)
            hit = self._cache.get(key, record.job.identity()) if key else None
            if hit is None:
                continue
            folder = Path(tempfile.mkdtemp(prefix="cache-", dir=self._staging))
            staged = folder / record.job.package_filename
            try:
                self._cache.copy_to(hit, staged)
                record.sha256, record.manifest = hit.sha256, hit.manifest
                if self._publish(record, staged):  # attesting it gives it another sha256
                    record.status, record.cached = "built", True
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return True
        return False

    def _publish(self, record: JobRecord, staged: Path) -> bool:
        """Publish a verified package, and its .zip twin when the job asks for one (made
        beside it in staging first), together; False, and nothing published, when the run
        was cancelled. A publishing error (a full disk) fails the job, not the run."""
        job = record.job
        files = [(staged, job.package_filename)]
        try:
            if self._attest is not None:
                record.attested = self._attest(job, staged)
                record.sha256 = record.attested.sha256
            if job.zip_filename:
                twin = staged.with_name(job.zip_filename)
                zip_from_archive(staged, twin)
                files.insert(0, (twin, job.zip_filename))
            with self._publishing:
                if self.cancelled.is_set():
                    record.status, record.reason = "cancelled", "the run was cancelled"
                    return False
                published = publish(files, self._out_dir)
        except OSError as exc:
            record.status, record.failure = "failed", AttemptStatus.INFRASTRUCTURE
            record.reason = f"could not publish into {self._out_dir}: {exc}"
            return False
        record.package = published[-1]
        record.zip = published[0] if job.zip_filename else None
        return True

    # -- running ---------------------------------------------------------------------
    def _run_job(self, record: JobRecord) -> None:
        job = record.job
        record.started = time.time()
        tried: set[str] = set()
        try:
            if self._from_cache(record):
                return
            while len(record.attempts) < self._max_attempts:
                state = self._acquire(job, tried)
                if state is None:
                    break
                record.status = "running"
                name = state.host.name
                tried.add(name)
                labels = {**self._labels, "org.modelpack.job": job.id}
                attempt: Attempt | None = None
                try:
                    timeouts = self._timeouts
                    if self._is_emulated(name, job):  # qemu runs the engines 5-50x slower
                        timeouts = replace(timeouts, package=timeouts.package * EMULATION_SLOWDOWN)
                    attempt = run_attempt(
                        job, state.transport, self._staging, timeouts, labels,
                        on_stage=lambda s, n=name, st=state: self._on_stage(record, n, st, s),
                        on_log=lambda line, n=name: self.events.job_log(record, n, line),
                        on_open=self._track, leases=self._leases,
                    )
                finally:
                    failed_infra = attempt is None or attempt.status is AttemptStatus.INFRASTRUCTURE
                    self._release(state, attempt.reason if attempt and failed_infra else None)
                record.attempts.append(attempt)
                if attempt.status is AttemptStatus.OK and not self.cancelled.is_set():
                    assert attempt.staged is not None and attempt.sha256 is not None
                    key = self._key_for(job, name) if self._cache else None
                    if key:
                        self._cache.put(key, attempt.staged, attempt.sha256,  # type: ignore[union-attr]
                                        job.identity())
                    record.sha256, record.manifest = attempt.sha256, attempt.manifest
                    try:
                        if self._publish(record, attempt.staged):
                            record.status = "built"
                    finally:
                        shutil.rmtree(attempt.staged.parent, ignore_errors=True)
                    return
                if attempt.status is AttemptStatus.PACKAGE:
                    record.status, record.failure, record.reason = "failed", AttemptStatus.PACKAGE, attempt.reason
                    return
                # infrastructure failure: back off briefly before the next host
                if self.cancelled.wait(min(0.5 * 2 ** (len(record.attempts) - 1), 5.0)):
                    break
            if self.cancelled.is_set():
                record.status, record.reason = "cancelled", "the run was cancelled"
                return
            reasons = "; ".join(f"{a.host}: {a.reason}" for a in record.attempts) or "no attempt could start"
            skipped = [h.name for h in self._eligible[job.id] if self._hosts[h.name].disabled and h.name not in tried]
            if skipped:
                reasons += f"; disabled earlier in this run: {', '.join(skipped)}"
            record.status, record.failure = "failed", AttemptStatus.INFRASTRUCTURE
            record.reason = f"no host could build it ({reasons})"
        finally:
            record.finished = time.time()
            host_name = record.attempts[-1].host if record.attempts else ("cache" if record.cached else None)
            self.events.job_update(record, host_name, "built (from cache)" if record.cached else record.status)

    def run(self) -> list[JobRecord]:
        with ThreadPoolExecutor(max_workers=self._parallel, thread_name_prefix="modelpack-job") as pool:
            futures = [pool.submit(self._run_job, r) for r in self.records]
            try:
                for future in futures:
                    while not future.done():
                        time.sleep(0.05)
                    future.result()
            except BaseException:
                self.cancel()
                raise
        return self.records

