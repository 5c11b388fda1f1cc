"""The job file: the whole contract between the controller and the packager.

The controller writes ``job.json`` next to the model in the host's workspace; the
packager reads nothing else. Keeping it a plain dataclass (no pydantic) lets both sides
share one definition while the build host needs only the standard library to read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from ..runtime.checks import Tolerance
from .messages import Message, MessageError

RESULT_FILE = "result.json"


class Outcome(str, Enum):
    """How a packager run ended, as ``result.json`` and the exit code say it. Anything
    else (a signal, a crash before the result was written) is the host's failure."""

    OK = "ok"
    #: the model cannot be packaged as instructed; another host would say the same
    FAILED = "failed"
    #: the job does not fit this host or arrived broken (platform, checksum, job file)
    BAD_JOB = "bad-job"

    @property
    def exit_code(self) -> int:
        return {Outcome.OK: 0, Outcome.FAILED: 1, Outcome.BAD_JOB: 2}[self]


class BadJob(ValueError):
    """The job does not fit this host or arrived broken: exit code 2. Raised only where
    that is what happened, never for a stray ``ValueError``."""


class PackageFailed(RuntimeError):
    """The model could not be packaged as instructed: exit code 1, not retried."""


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
class Job(Message):
    kind: ClassVar[str] = "job"
    name: str
    version: str
    target: JobTarget
    model: str  # file name inside the job's input folder
    model_sha256: str
    compilers: list[CompilerCall]
    atol: float
    rtol: float
    #: outputs held to a gate of their own: {name: {"atol", "rtol"}}; the others to atol, rtol
    output_tolerance: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the model's external data files (its weights, for big models), by the location the
    #: model names them with relative to its own folder, and their sha256
    model_data: dict[str, str] = field(default_factory=dict)
    samples: str | None = None  # file name inside the job's input folder
    #: per input, each dimension a size or a range {"min", "max", "bench"}
    shapes: dict[str, list[Any]] = field(default_factory=dict)
    #: "reject" or "allow": a candidate that runs only at the benchmark size is rejected,
    #: or packaged at that size (and the manifest says so)
    fixed_shapes: str = "reject"
    provenance: dict[str, Any] = field(default_factory=dict)
    #: selection policy (metric, latency_budget_ms, prefer, engine, benchmark_s, max_rounds)
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
    #: the device's runtime settings: {"threads": N or None, "engines": {engine: {setting: value}}};
    #: every artifact records them and every measurement runs with them
    device: dict[str, Any] = field(default_factory=dict)
    #: a quantised model whose spec left the tolerance unset: the packager widens each
    #: output's atol to twice what onnxruntime's own kernels differ from the model's exact
    #: semantics on it over the golden samples (the gate is then a result, not an instruction)
    measure_tolerance: bool = False
    #: the controller grants a benchmark lease (its transport can tell a running packager):
    #: wait for it before timing anything
    benchmark_lease: bool = False

    @property
    def tolerance(self) -> Tolerance:
        """The accuracy gate every step holds the package and its candidates to."""
        return Tolerance.from_json({"atol": self.atol, "rtol": self.rtol, "outputs": self.output_tolerance})

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> "Job":
        return cls(**{**data, "target": JobTarget(**data["target"]),
                      "compilers": [CompilerCall(**c) for c in data["compilers"]]})

    def instructions_sha256(self) -> str:
        """What the package was asked to be, as one digest: every field but provenance
        (which host and when) and the benchmark lease (whether that host grants one). The packager records it in the manifest, and the
        controller publishes a package, built or cached, only when it matches the job's."""
        fields = asdict(self)
        del fields["provenance"], fields["benchmark_lease"]  # where and how it was built, not what
        if self.measure_tolerance:  # the packager's measurement, not what it was asked
            del fields["atol"], fields["rtol"], fields["output_tolerance"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @classmethod
    def read(cls, path: Path) -> "Job":
        """The job file; a BadJob naming the file when it cannot be read or is not a job
        of this packager's version (the controller that sent it is another version)."""
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, MessageError) as exc:
            raise BadJob(f"{path}: {exc}") from None


@dataclass
class Result(Message):
    """``result.json``: what a packager run tells the controller, read as data (never
    scraped from logs) and validated where it is read."""

    kind: ClassVar[str] = "result"
    status: Outcome
    error: str | None = None
    #: a built package: its file name in ``out/``, checksum and size
    package: str | None = None
    sha256: str | None = None
    size: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    selftest: dict[str, Any] | None = None
    selected: dict[str, Any] | None = None

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> "Result":
        result = cls(**{**data, "status": Outcome(data.get("status"))})
        if result.status is Outcome.OK and result.package is not None:
            if not (isinstance(result.package, str) and isinstance(result.sha256, str) and len(result.sha256) == 64
                    and isinstance(result.size, int)):
                raise ValueError("a built result needs package, sha256 and size")
        if not isinstance(result.timings, dict):
            raise ValueError("timings is not an object")
        return result


def package_filename(name: str, version: str, target: str) -> str:
    return f"{name}-{version}-{target}.tar.gz"


#: a stdout line starting with this tells the controller which packaging stage is running
STAGE_MARKER = "::modelpack-stage::"
#: ``LEASE_MARKER + "request"`` asks the controller for the host's benchmark lease (see
#: orchestrator/leases.py), which answers by putting LEASE_FILE in the workspace;
#: ``LEASE_MARKER + "release"`` gives it back
LEASE_MARKER = "::modelpack-lease::"
LEASE_FILE = "benchmark.lease"
