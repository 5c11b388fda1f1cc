"""``summary.json``: the machine-readable record of a run, defined once.

Written at the end of every build, and read back by ``--compare`` and ``modelpack
report`` (often last night's file, sometimes from another modelpack version), so it is
read through the definitions below and refused with the key that is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..runtime.schema import SchemaError, documented, parse, tables
from ..scheduler import JobRecord
from ..storage import write_atomic

SUMMARY_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CandidateRow:
    """One candidate the test script weighed, as reports show it."""

    id: str = documented("compiler, variant and functions route, e.g. `onnxruntime+fp16`")
    engine: str = documented("the engine that runs it")
    status: str = documented("`selected`, `passed`, `rejected`, `failed`, `crashed`, `unsupported`...")
    reason: str | None = documented("why it was not selected", None)
    median_ms: float | None = documented("median latency on the build host", None)
    p90_ms: float | None = documented("90th percentile latency", None)
    spread_ms: float | None = documented("p90 - p10", None)
    max_abs_error: float | None = documented("worst absolute error against the reference", None)
    size_bytes: int | None = documented("artifact size", None)
    emulated: bool = documented("measured under emulation", False)
    held_out: str | None = documented("a variant's loss against fp32 on held-out samples, one line", None)


@dataclass(frozen=True)
class JobSummary:
    """One job (a spec on a target) of the run."""

    job: str = documented("`<name>/<target>`")
    name: str = documented("package name")
    version: str = documented("package version")
    spec: str = documented("the spec file")
    target: str = documented("target name")
    status: str = documented("`built`, `failed` or `cancelled`")
    failure: str | None = documented("`infrastructure` or `package` when it failed", None)
    reason: str | None = documented("why it failed", None)
    host: str | None = documented("the host of the last attempt", None)
    attempts: list[dict[str, Any]] = documented("every attempt: host, status, reason, stage timings", factory=list)
    package: str | None = documented("the published package", None)
    zip: str | None = documented("its .zip twin", None)
    sha256: str | None = documented("the package's sha256", None)
    cached: bool = documented("republished from the package cache", False)
    signer: str | None = documented("id (sha256 of the public key PEM) of the release key that signed it; null: unsigned",
                                    None)
    attestations: list[str] = documented("attestation files in the package: provenance, BOM, signature",
                                         factory=list)
    size: int | None = documented("package size in bytes", None)
    seconds: float | None = documented("wall time of the job", None)
    engine: str | None = documented("the engine the package ships", None)
    selected: str | None = documented("the selected candidate", None)
    latency_ms: float | None = documented("its median latency", None)
    max_abs_error: float | None = documented("its worst absolute error", None)
    emulated: bool | None = documented("measured under emulation", None)
    candidates: list[CandidateRow] = documented("every candidate weighed", factory=list)


@dataclass(frozen=True)
class RunSummary:
    """`summary.json`."""

    modelpack_version: str = documented("the controller's version")
    run_id: str = documented("the run's id, also on its containers and workspaces")
    inventory: str = documented("the hosts file")
    counts: dict[str, int] = documented("jobs per status")
    jobs: list[JobSummary] = documented("every job")
    schema_version: int = documented(f"this definition's version ({SUMMARY_SCHEMA_VERSION})", SUMMARY_SCHEMA_VERSION)

    @classmethod
    def check(cls, data: Any) -> "RunSummary":
        """The typed summary; raises SchemaError naming the first key that is wrong."""
        if isinstance(data, dict) and data.get("schema_version", SUMMARY_SCHEMA_VERSION) != SUMMARY_SCHEMA_VERSION:
            raise SchemaError("schema_version", f"{data['schema_version']!r} is not {SUMMARY_SCHEMA_VERSION}")
        return parse(cls, data, "summary")


def reference() -> str:
    return tables([RunSummary, JobSummary, CandidateRow])


def summary(records: list[JobRecord], run_id: str, inventory_source: str) -> dict[str, Any]:
    jobs = [r.to_json() for r in records]
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    data = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "modelpack_version": __version__,
        "run_id": run_id,
        "inventory": inventory_source,
        "counts": counts,
        "jobs": jobs,
    }
    RunSummary.check(data)  # what every reader will check: a bug fails this run, not tomorrow's compare
    return data


def write_json(path: Path, data: Any, scratch: Path | None = None) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", scratch)
