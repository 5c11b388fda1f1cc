"""One attempt at one job on one host: push, package, pull, verify.

The outcome is classified here, because only here are both sides visible:

* ``infrastructure``: the host or link failed, the host refused the job as not
  matching it, the packager died without a verdict, or what came back failed
  verification. Worth retrying on another host.
* ``package``: the packager ran and said the model cannot be packaged as instructed
  (exit code 1). Retrying elsewhere would say the same, so it is not retried.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, TypeVar

from . import __version__
from .collect import VerificationError, verify_archive
from .leases import BenchmarkLeases, LeaseClient
from .packager.job import LEASE_MARKER, RESULT_FILE, STAGE_MARKER, Outcome, Result
from .plan import PlannedJob, packager_code
from .transports.base import Transport, TransportError, Workspace
from .transports.watchdog import Watchdog

LOG_TAIL = 200
#: result.json is a few kilobytes; a host sending more is refused
MAX_RESULT_BYTES = 1 << 20


class AttemptStatus(StrEnum):
    """How one attempt ended; the scheduler acts on it (retry elsewhere or not)."""

    RUNNING = "running"
    OK = "ok"
    #: the host, the link, or what came back failed: another host may succeed
    INFRASTRUCTURE = "infrastructure"
    #: the packager ran and said the model cannot be packaged as instructed
    PACKAGE = "package"


def classify(code: int, result: Result | None) -> AttemptStatus:
    """The one place a packager run becomes an attempt outcome. A package failure needs
    both the exit code and the result file to say so; a bad job (the host refused it),
    a signal, or a run that left no valid result is the host's failure."""
    if result is not None and code == result.status.exit_code:
        return {Outcome.OK: AttemptStatus.OK, Outcome.FAILED: AttemptStatus.PACKAGE,
                Outcome.BAD_JOB: AttemptStatus.INFRASTRUCTURE}[result.status]
    return AttemptStatus.INFRASTRUCTURE

T = TypeVar("T")


#: time for copying in and out around a command's own limit, seconds
LIFETIME_MARGIN = 10.0


@dataclass(frozen=True)
class StageTimeouts:
    """Time limits per stage of an attempt, seconds. Exceeding one is an infrastructure
    failure: the workspace is destroyed (container removed, channel dropped) and the job
    moves to another host."""

    connect: float = 120.0
    push: float = 600.0
    package: float = 1800.0
    pull: float = 600.0

    @property
    def lifetime(self) -> float:
        """How long an attempt's workspace may live at most: every stage at its limit."""
        return self.connect + self.push + self.package + self.pull + LIFETIME_MARGIN


def within(limit: float, what: str, action: Callable[[], T], abort: Callable[[], None]) -> T:
    """Run ``action``; after ``limit`` seconds call ``abort`` (which makes a blocked
    action fail) and report the stage as timed out rather than whatever broke."""
    with Watchdog(limit, abort) as watchdog:
        try:
            result = action()
        except Exception:
            if watchdog.fired:
                raise TransportError(f"{what} exceeded its {limit:g} s limit") from None
            raise
    if watchdog.fired:
        raise TransportError(f"{what} exceeded its {limit:g} s limit")
    return result


def open_within(transport: Transport, environment: str, labels: dict[str, str], limit: float,
                lifetime: float | None = None) -> Workspace:
    """``transport.open`` with a time limit. Opening cannot be interrupted from outside,
    so it runs in a helper thread; a workspace that arrives after the limit is closed."""
    box: dict[str, Any] = {}
    done = threading.Event()
    gave_up = threading.Event()

    def attempt() -> None:
        try:
            box["workspace"] = transport.open(environment, labels, lifetime)
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc
        finally:
            done.set()
            if gave_up.is_set() and "workspace" in box:
                box["workspace"].close()

    threading.Thread(target=attempt, daemon=True, name=f"open-{transport.name}").start()
    if not done.wait(limit):
        gave_up.set()
        if done.is_set() and "workspace" in box:  # it arrived just now
            box["workspace"].close()
        raise TransportError(f"{transport.name}: connect exceeded its {limit:g} s limit")
    if "error" in box:
        raise box["error"]
    return box["workspace"]


@dataclass
class Attempt:
    host: str
    status: AttemptStatus = AttemptStatus.RUNNING
    reason: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    packager_timings: dict[str, float] = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)
    staged: Path | None = None
    sha256: str | None = None
    manifest: dict[str, Any] | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host, "status": self.status, "reason": self.reason,
            "started_at": self.started_at, "ended_at": self.ended_at,
            "stages": self.stages, "packager_timings": self.packager_timings, "log_tail": self.log_tail,
        }


def run_attempt(
    job: PlannedJob,
    transport: Transport,
    staging: Path,
    timeouts: StageTimeouts,
    labels: dict[str, str],
    on_stage: Callable[[str], None],
    on_open: Callable[[Workspace], None] = lambda ws: None,
    on_log: Callable[[str], None] = lambda line: None,
    leases: BenchmarkLeases | None = None,
) -> Attempt:
    """One attempt of ``job`` on ``transport``'s host. With ``leases``, a packager there
    that benchmarks waits for the host's benchmark lease (see leases.py)."""
    attempt = Attempt(host=transport.name)
    lease: list[LeaseClient] = []  # the attempt's lease conversation, once the workspace is open
    log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
    current: list[Any] = []  # [stage name, start time] of the stage in progress

    def stage(name: str | None, detail: str = "") -> None:
        now = time.monotonic()
        if current:
            attempt.stages[current[0]] = round(now - current[1], 4)
        current[:] = [name, now] if name else []
        if name:
            on_stage(f"{name} {detail}".strip())

    def on_line(line: str) -> None:
        if line.startswith(STAGE_MARKER):
            on_stage(f"package: {line[len(STAGE_MARKER):]}")
        elif line.startswith(LEASE_MARKER) and lease:
            if line[len(LEASE_MARKER):].strip() == "request":
                on_stage("package: waiting for the host's benchmark lease")
                lease[0].request()
            else:
                lease[0].release()
        else:
            log.append(line)
            on_log(line)

    # Each attempt gets its own folder: jobs run concurrently and share the staging area.
    own = Path(tempfile.mkdtemp(prefix="attempt-", dir=staging))
    workspace: Workspace | None = None
    try:
        stage("connect")
        workspace = open_within(transport, job.target.environment, labels, timeouts.connect, timeouts.lifetime)
        on_open(workspace)
        opened = workspace
        provenance = {"host": transport.name, "transport": type(transport).__name__.removesuffix("Transport").lower(),
                      "controller_version": __version__, **workspace.provenance()}
        job_file = own / "job.json"
        granting = leases is not None and transport.grants_benchmark_lease
        job_file.write_text(replace(job.packager_job(provenance), benchmark_lease=granting).to_json())
        if granting:
            assert leases is not None
            lease.append(LeaseClient(leases, transport, opened, job.id))
        payload = {**packager_code(), **job.inputs(), "in/job.json": job_file}
        stage("push", _size(sum(p.stat().st_size for p in payload.values())))
        within(timeouts.push, f"{transport.name}: push", lambda: opened.push(payload), opened.close)
        stage("package")
        with leases.packaging(transport, workspace) if leases else contextlib.nullcontext():
            try:
                code, result = run_packager(workspace, ["build", "in/job.json"], timeouts.package, on_line,
                                            own / "result.json")
            finally:
                for held in lease:  # a packager that died mid-benchmark releases nothing itself
                    held.release()
        stage("pull")
        attempt.packager_timings = result.timings if result else {}
        status = classify(code, result)
        starved = workspace.out_of_memory() if status is not AttemptStatus.OK else None
        if starved:  # another host with the same limit would kill it too
            attempt.status, attempt.reason = AttemptStatus.PACKAGE, starved
            return attempt
        if status is not AttemptStatus.OK:
            message = (result and result.error) or _last_lines(log) or f"packager exited with code {code}"
            attempt.status = status
            attempt.reason = message if status is AttemptStatus.PACKAGE else f"{transport.name}: {message}"
            return attempt
        assert result is not None
        if result.package != job.package_filename or result.sha256 is None:
            raise TransportError(f"packager reported success but its result names {result.package!r}")
        staged = own / job.package_filename
        on_stage(f"pull {_size(result.size or 0)}")
        within(timeouts.pull, f"{transport.name}: pull",
               lambda: opened.pull(f"out/{job.package_filename}", staged, result.size or 0), opened.close)
        stage("verify")
        attempt.manifest = verify_archive(staged, result.sha256, job.identity())
        attempt.staged, attempt.sha256 = staged, result.sha256
        attempt.status = AttemptStatus.OK
    except (TransportError, VerificationError) as exc:
        attempt.status, attempt.reason = AttemptStatus.INFRASTRUCTURE, str(exc)
    finally:
        stage(None)
        attempt.log_tail = list(log)
        if workspace is not None:
            workspace.close()
        attempt.ended_at = time.time()
        if attempt.status is not AttemptStatus.OK:
            shutil.rmtree(own, ignore_errors=True)
    return attempt


def run_packager(
    workspace: Workspace, command: list[str], timeout: float, on_line: Callable[[str], None], result_dest: Path
) -> tuple[int, Result | None]:
    """Run ``python -m orchestrator.packager COMMAND --out out`` in a workspace that
    holds the packager code; return its exit code and its ``result.json`` (None when
    it wrote none, e.g. because it was killed, or wrote something that is not a result)."""
    code = workspace.run(
        [workspace.python, "-m", "orchestrator.packager", *command, "--out", "out"],
        {"PYTHONPATH": str(workspace.root), "PYTHONDONTWRITEBYTECODE": "1"},
        timeout, on_line,
    )
    result_dest.unlink(missing_ok=True)
    try:
        workspace.pull(f"out/{RESULT_FILE}", result_dest, MAX_RESULT_BYTES)
        return code, Result.from_json(result_dest.read_text(encoding="utf-8"))
    except (TransportError, ValueError, OSError):
        return code, None


def verify_remotely(
    archive: Path, environment: str, transport: Transport, staging: Path, timeout: float,
    labels: dict[str, str], on_line: Callable[[str], None],
) -> tuple[bool, str, Result | None]:
    """Self-test a package in a fresh workspace on ``transport``'s host (never the one
    that built it). Returns (passed, message, packager result)."""
    with transport.open(environment, labels, timeout + LIFETIME_MARGIN) as workspace:
        workspace.push({**packager_code(), f"in/{archive.name}": archive})
        code, result = run_packager(workspace, ["verify", f"in/{archive.name}"], timeout, on_line,
                                    staging / "verify.result.json")
    if classify(code, result) is AttemptStatus.OK:
        return True, "self-test passed", result
    return False, (result and result.error) or f"packager exited with code {code}", result


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _last_lines(log: collections.deque[str], n: int = 3) -> str:
    return " | ".join(line.strip() for line in list(log)[-n:] if line.strip())
