"""Matrix expansion: specs × targets → jobs, and what each job sends to its host."""

from __future__ import annotations

import fnmatch
import functools
import json
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import cache_key
from .collect import Identity, zip_twin_name
from .errors import InputError
from .packager.job import Job as PackagerJob
from .packager.job import JobTarget, package_filename
from .runtime.checks import content_sha256
from .spec import LoadedSpec
from .targets import TARGETS, Target

_CODE_ROOT = Path(__file__).resolve().parent.parent


def packager_code() -> dict[str, Path]:
    """The files that make up the packager on a build host (relative name → local file)."""
    package = _CODE_ROOT / "orchestrator"
    files = {"orchestrator/__init__.py": package / "__init__.py"}
    for sub in ("packager", "runtime"):
        for path in sorted((package / sub).rglob("*.py")):
            files[path.relative_to(_CODE_ROOT).as_posix()] = path
    return files


@functools.lru_cache(maxsize=1)
def packager_digest() -> str:
    """sha256 over the packager's code: changes whenever what runs on hosts changes."""
    digest = hashlib.sha256()
    for name, path in sorted(packager_code().items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class PlannedJob:
    spec: LoadedSpec
    target: Target

    @property
    def id(self) -> str:
        return f"{self.spec.spec.name}/{self.target.name}"

    @property
    def required_features(self) -> frozenset[str]:
        return frozenset(self.spec.spec.features.get(self.target.name, []))

    @property
    def package_filename(self) -> str:
        return package_filename(self.spec.spec.name, self.spec.spec.version, self.target.name)

    @property
    def zip_filename(self) -> str | None:
        """The package's .zip twin, for Windows targets whose spec asks for one."""
        if self.spec.spec.zip and self.target.os == "windows":
            return zip_twin_name(self.package_filename)
        return None

    def inputs(self) -> dict[str, Path]:
        """Job input files by their name in the workspace's ``in/`` folder."""
        files = {f"in/{self.model_name}": self.spec.model.path}
        files.update({f"in/model/{location}": file for location, file in self.spec.model.external.items()})
        if self.spec.samples is not None:
            files[f"in/samples{self.spec.samples.suffix}"] = self.spec.samples
        if self.spec.calibration is not None:
            files["in/calibration.npz"] = self.spec.calibration
        if self.spec.evaluation is not None:
            files["in/evaluation.npz"] = self.spec.evaluation
        if self.spec.metric is not None:
            files["in/metric.py"] = self.spec.metric
        return files

    @property
    def model_name(self) -> str:
        """The model's name in the workspace's ``in/`` folder: a folder of its own when
        external data files come with it, which then sit beside it under the names the
        model gives them and cannot meet the job's other files."""
        return "model/model.onnx" if self.spec.model.external else "model.onnx"

    def cache_key(self, environment_id: str) -> str:
        """What decides this job's package: model and samples bytes, the per-target
        instructions, the build environment and the packager code."""
        instructions = json.loads(self.packager_job({}).to_json())
        return cache_key({
            "model": self.spec.model.sha256,
            "samples": content_sha256(self.spec.samples) if self.spec.samples else None,
            "calibration": content_sha256(self.spec.calibration) if self.spec.calibration else None,
            "evaluation": content_sha256(self.spec.evaluation) if self.spec.evaluation else None,
            "metric": content_sha256(self.spec.metric) if self.spec.metric else None,
            "instructions": instructions,
            "environment": environment_id,
            "packager": packager_digest(),
        })

    def identity(self) -> Identity:
        """What this job's package must say it is (collect.py checks it before publishing)."""
        job = self.packager_job({})
        return Identity(job.name, job.version, job.target.name, job.model_sha256, job.instructions_sha256())

    def packager_job(self, provenance: dict[str, Any]) -> PackagerJob:
        s = self.spec.spec
        t = self.target
        atol, rtol, output_tolerance = s.tolerance.resolved(o["dtype"] for o in self.spec.model.outputs)
        return PackagerJob(
            name=s.name,
            version=s.version,
            target=JobTarget(t.name, t.os, t.arch, t.build_os, t.build_arch),
            model=self.model_name,
            model_sha256=self.spec.model.sha256,
            model_data=dict(self.spec.model.external_sha256),
            samples=f"samples{self.spec.samples.suffix}" if self.spec.samples else None,
            shapes=s.job_shapes(),
            fixed_shapes=s.fixed_shapes,
            compilers=s.compiler_calls() + s.variant_calls(),
            atol=atol,
            rtol=rtol,
            output_tolerance=output_tolerance,
            measure_tolerance=s.tolerance.measured(self.spec.model.quantized),
            provenance=provenance,
            select=s.select.model_dump(exclude_unset=True) if s.select else {},
            functions=({**s.functions.model_dump(), "labels": self.spec.labels or {}} if s.functions else None),
            calibration="calibration.npz" if self.spec.calibration else None,
            evaluation="evaluation.npz" if self.spec.evaluation else None,
            gate=s.accelerate.gate.model_dump(exclude_none=True, exclude_defaults=True) if s.accelerate else {},
            metric_file="metric.py" if self.spec.metric else None,
            device=s.device.job_fields() if s.device else {},
        )


def plan(specs: list[LoadedSpec], target_patterns: list[str] | None = None,
         model_patterns: list[str] | None = None) -> list[PlannedJob]:
    """Expand specs into jobs, keeping only targets matching ``target_patterns`` and
    package names matching ``model_patterns`` (globs)."""
    if model_patterns:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s.spec.name, p) for p in model_patterns)]
        if not specs:
            raise InputError(None, "--model", f"{', '.join(model_patterns)} selects none of the specs' models")
    for pattern in target_patterns or []:
        if not fnmatch.filter(TARGETS, pattern):
            raise InputError(None, "--target", f"{pattern!r} matches no known target ({', '.join(TARGETS)})")
    names = [s.spec.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        paths = [str(s.path) for s in specs if s.spec.name in twice]
        raise InputError(paths[0], "name", f"{twice[0]!r} is also the name in {', '.join(paths[1:])}; packages would collide")
    jobs = [
        PlannedJob(spec, target)
        for spec in specs
        for target in spec.targets
        if not target_patterns or any(fnmatch.fnmatchcase(target.name, p) for p in target_patterns)
    ]
    if not jobs:
        raise InputError(None, "--target", f"{', '.join(target_patterns or [])} selects none of the spec's targets")
    return jobs
