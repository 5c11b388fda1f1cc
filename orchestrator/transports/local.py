"""Local transport: the controller machine builds for its own platform.

A workspace is a private temporary folder; commands run as child processes in their
own process group so a timeout or Ctrl-C kills the whole tree.

Several controllers of one user on this machine share its benchmark lease and pause
each other's packagers through a state folder every one of them opens
(:func:`state_folder`), laid out like an SSH host's work directory so that the same
host-side code (hostside.py) records, proves and pauses the process groups.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Collection, Iterator, Mapping

from ..inventory import Host
from ..runtime.platforms import minimal_environment
from ..runtime.platforms import this_machine
from . import hostside
from .watchdog import Watchdog
from .base import CommandTimeout, HostStatus, LineSink, Transport, TransportError, Workspace, disk_problem

log = logging.getLogger(__name__)

class LocalTransport(Transport):
    def __init__(self, host: Host) -> None:
        self.host = host
        self.name = host.name

    def probe(self, environment: str) -> HostStatus:
        problem = disk_problem(self.host, shutil.disk_usage(tempfile.gettempdir()).free, tempfile.gettempdir())
        if problem:
            return HostStatus(False, problem)
        os_name, arch = this_machine()
        # the environment is this interpreter and what is installed in it: every
        # distribution's version identifies it (engines, converters and their dependencies)
        versions = sorted((d.metadata["Name"] or "", d.version) for d in metadata.distributions())
        identity = hashlib.sha256(json.dumps([sys.version, versions], sort_keys=True).encode()).hexdigest()
        return HostStatus(True, f"this machine ({os_name}/{arch}, Python {sys.version.split()[0]})",
                          emulated=False, facts={"environment_id": f"local:{identity}"})

    def open(self, environment: str, labels: Mapping[str, str], lifetime: float | None = None) -> "LocalWorkspace":
        return LocalWorkspace(keep=self.keep_workspaces)

    grants_benchmark_lease = True
    machine = "local"

    @contextlib.contextmanager
    def benchmark_lease(self, holder: str) -> Iterator[None]:
        """An exclusive lock on a file every controller of this user on this machine
        opens: the kernel releases it if the holder dies, so it can never go stale. What
        a holder that died had paused is resumed by the next one to take the lock."""
        try:
            import fcntl
        except ImportError:  # Windows: this controller's own lock only
            yield
            return
        state = state_folder()
        with open(state / "benchmark.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                hostside.thaw({"workdir": str(state)}, None)
                (state / "benchmark.lease").mkdir(exist_ok=True)  # where freeze_foreign records what it paused
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def others_paused(self, mine: Collection[Workspace]) -> Iterator[int]:
        """SIGSTOP the packagers other controllers run here (every process group recorded
        in the state folder outside ``mine``, proven to be a live one of that workspace),
        SIGCONT after."""
        work = {"workdir": str(state_folder())}
        roots = [str(w.root) for w in mine if isinstance(w, LocalWorkspace)]
        try:
            yield hostside.freeze_foreign({**work, "mine": roots}, None)["frozen"]
        finally:
            hostside.thaw(work, None)


def state_folder() -> Path:
    """The folder this user's controllers on this machine share: the benchmark lock, and
    a record of each running packager's process group (``pids/``) that a lease holder in
    another controller can find, prove and pause. Refused if someone else made it."""
    path = Path(tempfile.gettempdir()) / f"modelpack-local-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.is_symlink() or path.stat().st_uid != os.getuid():
        raise TransportError(f"{path} is not this user's own folder; remove it")
    (path / "pids").mkdir(exist_ok=True)
    return path


class LocalWorkspace(Workspace):
    python = sys.executable

    def __init__(self, keep: bool = False) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="modelpack-ws-"))
        self._keep = keep
        self.root = PurePosixPath(self._dir.as_posix())
        #: process groups of commands still running: closing the workspace stops them
        self._running: set[int] = set()

    def push(self, files: Mapping[str, Path]) -> None:
        try:
            for name, source in files.items():
                dest = self._dir / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
        except OSError as exc:
            raise TransportError(f"copying into the local workspace: {exc}") from exc

    def run(self, argv: list[str], env: Mapping[str, str], timeout: float, on_line: LineSink) -> int:
        state = state_folder()
        try:
            proc = subprocess.Popen(
                argv, cwd=self._dir, env=minimal_environment(env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(f"starting {argv[0]}: {exc}") from exc
        self._running.add(proc.pid)
        try:
            with Watchdog(timeout, lambda: _kill_group(proc.pid)) as watchdog:
                try:
                    hostside.record_group(str(state), str(self._dir), proc.pid)  # for other controllers' leases
                    assert proc.stdout is not None
                    for raw in proc.stdout:
                        on_line(raw.decode("utf-8", "replace").rstrip("\n"))
                    code = proc.wait()
                except BaseException:
                    _kill_group(proc.pid)
                    proc.wait()
                    raise
        finally:
            self._running.discard(proc.pid)
            Path(hostside.group_file(str(state), str(self._dir))).unlink(missing_ok=True)
        if watchdog.fired:
            raise CommandTimeout(f"{argv[0]} exceeded its {timeout:g} s limit and was killed")
        return code

    def pull(self, relative: str, dest: Path, max_bytes: int) -> None:
        source = self._dir / relative
        if source.is_symlink() or not source.is_file():
            raise TransportError(f"{source} is not a regular file")
        if source.stat().st_size > max_bytes:
            raise TransportError(f"{relative} is larger than the {max_bytes} bytes expected")
        shutil.copyfile(source, dest)

    def close(self) -> None:
        for group in list(self._running):  # a cancelled run: its packager stops with it
            _kill_group(group)
        if self._keep:
            log.warning("kept %s (--keep)", self._dir)
            return
        shutil.rmtree(self._dir, ignore_errors=True)

    def provenance(self) -> dict[str, Any]:
        return {"python": sys.executable, "emulated": False}

    def pause(self) -> bool:
        return _signal_groups(self._running, signal.SIGSTOP)

    def resume(self) -> None:
        _signal_groups(self._running, signal.SIGCONT)


def _signal_groups(groups: set[int], signum: int) -> bool:
    sent = False
    for group in list(groups):
        try:
            os.killpg(group, signum)
            sent = True
        except ProcessLookupError:  # ended meanwhile
            pass
    return sent


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
