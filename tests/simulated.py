"""Simulated transport: build hosts that exist only in this process.

It honours the Transport/Workspace contract like the real ones (as httpx's
MockTransport does for HTTP), but its "packager" only waits for a job's simulated
duration and then writes a small, valid package. The scheduler, the cache, the
reports and the CLI's bookkeeping all run for real, which is what the load test and
``scripts/bench-matrix`` measure: slots, failover and dispatch rate at a scale no real
fleet in CI offers (5,000 jobs over 200 hosts). It is not selectable in hosts.yaml.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from orchestrator.inventory import Host
from orchestrator.transports.base import HostStatus, LineSink, Transport, TransportError, Workspace

#: what a simulated host runs in place of the command it is asked to run:
#: (workspace folder, the files pushed by name, host name, wait) -> exit code, where
#: ``wait(seconds)`` returns True when the workspace was closed meanwhile. The caller
#: supplies it (``tests/stand_in.py`` plays the packager), so this
#: transport, like the real ones, knows nothing of packages.
Program = Callable[[Path, Mapping[str, Path], str, Callable[[float], bool]], int]


class SimulatedTransport(Transport):
    def __init__(self, host: Host, program: Program) -> None:
        self.host = host
        self.name = host.name
        self._program = program

    def probe(self, environment: str) -> HostStatus:
        return HostStatus(True, "simulated host", emulated=False,
                          facts={"environment_id": f"simulated:{environment}"})

    def open(self, environment: str, labels: Mapping[str, str], lifetime: float | None = None) -> "SimulatedWorkspace":
        return SimulatedWorkspace(self)


class SimulatedWorkspace(Workspace):
    python = "simulated-python"

    def __init__(self, transport: SimulatedTransport) -> None:
        self._transport = transport
        self._dir = Path(tempfile.mkdtemp(prefix="modelpack-sim-"))
        self.root = PurePosixPath(self._dir.as_posix())
        self._closed = threading.Event()
        #: pushed files stay where they are: the program reads what it needs of them
        self._files: dict[str, Path] = {}

    def push(self, files: Mapping[str, Path]) -> None:
        self._files.update(files)

    def run(self, argv: list[str], env: Mapping[str, str], timeout: float, on_line: LineSink) -> int:
        t = self._transport
        code = t._program(self._dir, dict(self._files), t.name,
                          lambda seconds: self._closed.wait(min(seconds, timeout)))
        if self._closed.is_set():
            raise TransportError(f"{t.name}: workspace closed while the job ran")
        return code

    def pull(self, relative: str, dest: Path, max_bytes: int) -> None:
        source = self._dir / relative
        if not source.is_file() or source.stat().st_size > max_bytes:
            raise TransportError(f"{relative}: not in the simulated workspace, or over {max_bytes} bytes")
        shutil.copyfile(source, dest)

    def close(self) -> None:
        self._closed.set()
        shutil.rmtree(self._dir, ignore_errors=True)

    def provenance(self) -> dict[str, Any]:
        return {"simulated": True, "emulated": False}
