"""A stand-in for the packager on simulated hosts (``tests/simulated.py``).

It waits for a job's simulated duration, then writes the smallest package that passes
the controller's verification, and its result file, where the real packager would.
The scheduler, the cache, the reports and the CLI's bookkeeping then run for real at a
scale no real fleet in CI offers (the load test and ``scripts/bench-matrix``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from orchestrator.runtime.checks import sha256_file
from orchestrator.runtime.manifest import SCHEMA_VERSION
from orchestrator.packager.job import RESULT_FILE, Job, Outcome, Result, package_filename
from orchestrator.packager.package import write_archive, write_manifest

#: seconds a job takes on a host, from the job and the host's name
Duration = Callable[[Job, str], float]


def stand_in(duration: Duration) -> Callable[[Path, Mapping[str, Path], str, Callable[[float], bool]], int]:
    """A simulated host's program: the job's duration, then a synthetic package."""

    def program(folder: Path, files: Mapping[str, Path], host: str, wait: Callable[[float], bool]) -> int:
        job = Job.read(files["in/job.json"])
        if wait(duration(job, host)):
            return Outcome.OK.exit_code  # the workspace was closed: the transport reports that
        out = folder / "out"
        out.mkdir(exist_ok=True)
        archive = out / package_filename(job.name, job.version, job.target.name)
        _synthetic_package(job, folder / "package", archive)
        result = Result(Outcome.OK, package=archive.name, sha256=sha256_file(archive),
                        size=archive.stat().st_size, selected={"engine": "simulated"})
        (out / RESULT_FILE).write_text(result.to_json())
        return result.status.exit_code

    return program


def _synthetic_package(job: Job, root: Path, archive: Path) -> None:
    """The smallest package that passes the controller's verification."""
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.bin").write_bytes(job.model_sha256.encode())
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "name": job.name, "version": job.version, "target": vars(job.target),
        "source": {"sha256": job.model_sha256, "instructions_sha256": job.instructions_sha256()},
        "inputs": [], "outputs": [],
        "artifacts": [{"path": "model/model.bin", "format": "simulated", "engine": "simulated", "role": "primary"}],
        "engines": {"simulated": {"version": "0"}}, "candidates": [], "selection": {},
        "selftest": {"passed": True, "artifacts": {}},
    }
    write_manifest(root, manifest)
    write_archive(root, archive)
    shutil.rmtree(root)
