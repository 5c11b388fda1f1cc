"""The job file: the whole contract between the controller and the packager.

The controller writes ``job.json`` next to the model in the host's workspace; the
packager reads nothing else. Keeping it a plain dataclass (no pydantic) lets both sides
share one definition while the build host needs only the standard library to read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

JOB_SCHEMA_VERSION = 1
RESULT_FILE = "result.json"

#: packager exit codes; anything else (a signal, a crash) is an infrastructure failure
EXIT_OK = 0
EXIT_PACKAGE_FAILED = 1
EXIT_BAD_JOB = 2


@dataclass
class CompilerCall:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    #: acceleration variant this call builds (packager/accelerate.py), None for the fp32 baseline
    variant: str | None = None


@dataclass
class JobTarget:
    name: str
    os: str
    arch: str
    build_os: str
    build_arch: str


@dataclass
class Job:
    name: str
    version: str
    target: JobTarget
    model: str  # file name inside the job's input folder
    model_sha256: str
    compilers: list[CompilerCall]
    atol: float
    rtol: float
    samples: str | None = None  # file name inside the job's input folder
    #: per input, each dimension a size or a range {"min", "max", "bench"}
    shapes: dict[str, list[Any]] = field(default_factory=dict)
    #: "reject" or "allow": a candidate that runs only at the benchmark size is rejected,
    #: or packaged at that size (and the manifest says so)
    fixed_shapes: str = "reject"
    provenance: dict[str, Any] = field(default_factory=dict)
    #: selection policy (metric, latency_budget_ms, prefer, engine, benchmark_s, max_runs)
    select: dict[str, Any] = field(default_factory=dict)
    #: time limit for each compile or measure worker process, seconds
    worker_timeout: float = 600.0
    #: the spec's `functions` (pre/post steps, input, output, fallback) plus label lists by file name
    functions: dict[str, Any] | None = None
    #: calibration samples (file name inside the job's input folder), leading axis = sample
    calibration: str | None = None
    #: held-out samples that judge variants (file name in the job's input folder), leading
    #: axis = sample; without it, the calibration samples are split
    evaluation: str | None = None
    #: how variants are gated: {} for the tolerance, or one of top1_agreement, box_recall,
    #: sequence_agreement, metric + max_drop (with output and iou where they apply)
    gate: dict[str, Any] = field(default_factory=dict)
    #: the user's metric module (file name inside the job's input folder) for gate.metric
    metric_file: str | None = None
    schema_version: int = JOB_SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Job":
        data = json.loads(text)
        if data.get("schema_version") != JOB_SCHEMA_VERSION:
            raise ValueError(
                f"job schema_version {data.get('schema_version')!r} is not {JOB_SCHEMA_VERSION};"
                " controller and packager versions differ"
            )
        data["target"] = JobTarget(**data["target"])
        data["compilers"] = [CompilerCall(**c) for c in data["compilers"]]
        return cls(**data)

    @classmethod
    def read(cls, path: Path) -> "Job":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def package_filename(name: str, version: str, target: str) -> str:
    return f"{name}-{version}-{target}.tar.gz"


#: a stdout line starting with this tells the controller which packaging stage is running
STAGE_MARKER = "::modelpack-stage::"
