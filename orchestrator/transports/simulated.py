"""Simulated transport: build hosts that exist only in this process.

It honours the Transport/Workspace contract like the real ones (as httpx's
MockTransport does for HTTP), but its "packager" only waits for a job's simulated
duration and then writes a small, valid package. The scheduler, the cache, the
reports and the CLI's bookkeeping all run for real, which is what the load test and
``scripts/bench-matrix`` measure: slots, failover and dispatch rate at a scale no real
fleet in CI offers (5,000 jobs over 200 hosts). It is not selectable in hosts.yaml.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from ..inventory import Host
from ..packager.job import RESULT_FILE, Job, package_filename
from ..packager.package import write_archive, write_manifest
from ..runtime.checks import sha256_file
from .base import HostStatus, LineSink, Transport, TransportError, Workspace

#: seconds a job takes on a host, from the job's name and the host's name
Duration = Callable[[Job, str], float]


class SimulatedTransport(Transport):
    def __init__(self, host: Host, duration: Duration, fail: Callable[[Job, str], bool] | None = None) -> None:
        self.host = host
        self.name = host.name
        self._duration = duration
        self._fail = fail or (lambda job, host: False)

    def probe(self, environment: str) -> HostStatus:
        return HostStatus(True, "simulated host", arch="x86_64", emulated=False,
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

    def push(self, files: Mapping[str, Path]) -> None:
        # only the job file matters to the synthetic packager; the rest is not copied
        if "in/job.json" in files:
            (self._dir / "in").mkdir(exist_ok=True)
            shutil.copyfile(files["in/job.json"], self._dir / "in" / "job.json")

    def run(self, argv: list[str], env: Mapping[str, str], timeout: float, on_line: LineSink) -> int:
        job = Job.read(self._dir / "in" / "job.json")
        if self._closed.wait(min(self._transport._duration(job, self._transport.name), timeout)):
            raise TransportError(f"{self._transport.name}: workspace closed while the job ran")
        if self._transport._fail(job, self._transport.name):
            raise TransportError(f"{self._transport.name}: simulated host failure")
        out = self._dir / "out"
        out.mkdir(exist_ok=True)
        archive = out / package_filename(job.name, job.version, job.target.name)
        _synthetic_package(job, self._dir / "package", archive)
        result = {"status": "ok", "package": archive.name, "sha256": sha256_file(archive),
                  "size": archive.stat().st_size, "timings": {}, "selected": {"engine": "simulated"}}
        (out / RESULT_FILE).write_text(json.dumps(result))
        return 0

    def pull(self, relative: str, dest: Path) -> None:
        source = self._dir / relative
        if not source.is_file():
            raise TransportError(f"{relative}: not in the simulated workspace")
        shutil.copyfile(source, dest)

    def close(self) -> None:
        self._closed.set()
        shutil.rmtree(self._dir, ignore_errors=True)

    def provenance(self) -> dict[str, Any]:
        return {"simulated": True, "emulated": False}


def _synthetic_package(job: Job, root: Path, archive: Path) -> None:
    """The smallest package that passes the controller's verification."""
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.bin").write_bytes(job.model_sha256.encode())
    manifest: dict[str, Any] = {
        "schema_version": 1, "name": job.name, "version": job.version, "target": vars(job.target),
        "source": {"sha256": job.model_sha256}, "inputs": [], "outputs": [],
        "artifacts": [{"path": "model/model.bin", "format": "simulated", "engine": "simulated", "role": "primary"}],
        "engines": {"simulated": {"version": "0"}}, "candidates": [], "selection": {},
        "selftest": {"passed": True, "artifacts": {}},
    }
    write_manifest(root, manifest)
    write_archive(root, archive)
    shutil.rmtree(root)
