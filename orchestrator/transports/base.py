"""The transport interface: a tiny contract every way of reaching a host honours.

A :class:`Transport` probes one host and opens :class:`Workspace` objects on it; a
workspace is a fresh, private working area for one job attempt that can receive
files, run an argv, hand files back, and is always destroyed on close. Every failure
of the host or the link is raised as :class:`TransportError`: the scheduler treats it
as an *infrastructure* failure and may retry elsewhere, whereas a non-zero exit code
from the command is the command's own business.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Collection, ContextManager, Mapping

if TYPE_CHECKING:
    from ..inventory import Host

#: called with each line the remote command prints (stdout and stderr, in order)
LineSink = Callable[[str], None]


class TransportError(RuntimeError):
    """The host or the link failed (not the command): an infrastructure failure."""


class CommandTimeout(TransportError):
    """The command outlived its time limit and was killed."""


@dataclass
class HostStatus:
    reachable: bool
    detail: str
    emulated: bool | None = None
    facts: dict[str, Any] = field(default_factory=dict)


class Workspace(ABC):
    """One job attempt's working area on a host. Use as a context manager."""

    #: absolute path of the workspace on the host
    root: PurePosixPath
    #: the interpreter that runs the packager on the host
    python: str

    @abstractmethod
    def push(self, files: Mapping[str, Path]) -> None:
        """Copy local files to ``root/<relative name>``, creating folders."""

    @abstractmethod
    def run(self, argv: list[str], env: Mapping[str, str], timeout: float, on_line: LineSink) -> int:
        """Run ``argv`` (never through a shell) in ``root``; return its exit code.
        Raises :class:`CommandTimeout` after ``timeout`` seconds."""

    @abstractmethod
    def pull(self, relative: str, dest: Path, max_bytes: int) -> None:
        """Copy the regular file ``root/<relative>`` to the local path ``dest``; refused,
        with nothing left at ``dest``, if it is larger than ``max_bytes`` (the size the
        packager reported), so a host cannot fill the controller's disk."""

    @abstractmethod
    def close(self) -> None:
        """Destroy the workspace and everything in it. Idempotent; never raises."""

    def provenance(self) -> dict[str, Any]:
        """Facts about where the work ran, for the package manifest."""
        return {}

    def out_of_memory(self) -> str | None:
        """Why the last command was killed for lack of memory, if it was (its workspace has
        a memory limit the job outgrew): the job's own failure, not the host's."""
        return None

    def pause(self) -> bool:
        """Freeze the command running here while another job on the host benchmarks, so
        the benchmark sees the quiet a device has; False where this transport cannot."""
        return False

    def resume(self) -> None:
        """Undo :meth:`pause`. Never raises: a workspace that ended meanwhile is fine."""

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def disk_problem(host: "Host", free_bytes: int | None, where: str) -> str | None:
    """Why a host's free disk fails the preflight, or None. A package build writes the
    model several times over (candidates, variants, archives): a full disk mid-night is
    an infrastructure failure better found before the first job."""
    if free_bytes is None or free_bytes >= host.min_free_gb * (1 << 30):
        return None
    return (f"only {free_bytes / (1 << 30):.2f} GB free in {where}, below min_free_gb={host.min_free_gb:g};"
            f" free some space or lower min_free_gb in hosts.yaml")


class Transport(ABC):
    name: str
    host: "Host"
    #: ``build --keep``: leave work directories on the host for inspection (SSH and local
    #: hosts; Docker containers are always removed). A kept SSH workspace still carries
    #: its lease, so ``hosts clean`` removes it once that expires.
    keep_workspaces: bool = False

    @abstractmethod
    def probe(self, environment: str) -> HostStatus:
        """Is the host reachable and ready to build in ``environment``? Never raises."""

    @abstractmethod
    def open(self, environment: str, labels: Mapping[str, str], lifetime: float | None = None) -> Workspace:
        """Create a fresh workspace for the build environment ``environment``. With a
        ``lifetime`` (seconds), a workspace the host can end by itself does so after
        that long, so that it never outlives a controller that died without cleaning up
        (a container's main process sleeps only that long)."""

    def reap(self) -> list[str]:
        """Remove workspaces that a crashed earlier run left behind; name them. Raises
        :class:`TransportError` when the host cannot be asked."""
        return []

    #: whether a packager there can be told it holds the benchmark lease (the controller
    #: pushes a file into its workspace while it runs)
    grants_benchmark_lease: bool = False

    @property
    def machine(self) -> str:
        """The machine the host's work runs on: hosts naming one machine (two inventory
        entries for one Docker engine) share its benchmark lease and pause each other."""
        return self.name

    def others_paused(self, mine: Collection[Workspace]) -> ContextManager[int]:
        """While this controller holds the benchmark lease: pause the packaging that other
        controllers run on this machine (every workspace not in ``mine``), and resume it
        after; yields how many were paused. By default none can be seen."""
        return contextlib.nullcontext(0)

    def benchmark_lease(self, holder: str) -> ContextManager[None]:
        """Hold the host's benchmark lease against other controllers: one benchmark at a
        time on a host, wherever it was started from. By default only this controller's
        own lock applies (orchestrator/leases.py)."""
        return contextlib.nullcontext()
