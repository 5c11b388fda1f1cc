"""One packaging job, start to finish, on the build host.

platform check → model check → samples and reference outputs → compiler → package
layout → self-test of every runnable artifact through the shipped runtime → archive.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..runtime import load as load_package
from ..runtime.checks import sha256_file
from ..runtime.engines import OnnxRuntimeRunner
from . import platform
from .compilers import CompilerError, OptionsError, parse_options, registry
from .job import Job, package_filename
from .package import add_runtime, write_archive, write_manifest
from .samples import concrete_shapes, load_samples, random_inputs
from .signature import load_onnx, opsets, signature

MANIFEST_SCHEMA_VERSION = 1


class BadJob(ValueError):
    """The job itself is wrong (mismatched host, corrupt transfer): exit code 2."""


class PackageFailed(RuntimeError):
    """The model could not be packaged as instructed: exit code 1, not retried."""


def _write_samples(root: Path, kind: str, arrays: dict[str, np.ndarray], names: list[str]) -> dict[str, str]:
    """Save arrays as ``samples/<kind>-<index>.npy``: tensor names may contain any
    character, so files are named by position and the manifest maps names to files."""
    (root / "samples").mkdir(exist_ok=True)
    table = {}
    for index, name in enumerate(names):
        rel = f"samples/{kind}-{index}.npy"
        np.save(root / rel, np.ascontiguousarray(arrays[name]), allow_pickle=False)
        table[name] = rel
    return table


def build(job: Job, in_dir: Path, out_dir: Path, stage: Callable[[str], None]) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now

    stage("platform")
    try:
        env = platform.detect(job.target)
    except platform.PlatformMismatch as exc:
        raise BadJob(str(exc)) from None
    model_path = in_dir / job.model
    if sha256_file(model_path) != job.model_sha256:
        raise BadJob(f"{job.model}: sha256 differs from the controller's; the transfer was corrupted")
    lap("platform")

    stage("reference")
    try:
        model = load_onnx(model_path)
        inputs, outputs = signature(model)
        if job.samples:
            feeds = load_samples(in_dir / job.samples, inputs)
            origin = {"kind": "spec", "file": job.samples}
        else:
            seed = int(job.model_sha256[:8], 16)
            feeds = random_inputs(inputs, concrete_shapes(inputs, job.shapes), seed)
            origin = {"kind": "random", "seed": seed}
        reference = OnnxRuntimeRunner(model_path, optimization="disabled").run(feeds)
    except ValueError as exc:
        raise PackageFailed(f"model: {exc}") from None
    except Exception as exc:  # the reference engine rejecting the model is a package failure
        raise PackageFailed(f"reference run under onnxruntime failed: {exc}") from None
    lap("reference")

    stage("compile")
    if len(job.compilers) != 1:
        raise BadJob("this packager builds with exactly one compiler per job")
    call = job.compilers[0]
    compiler = registry().get(call.name)
    if compiler is None:
        raise BadJob(f"unknown compiler {call.name!r}")
    if job.target.name not in compiler.targets:
        raise PackageFailed(f"compiler {call.name} does not support target {job.target.name}")
    compiler_version = compiler.version()
    if compiler_version is None:
        raise PackageFailed(f"compiler {call.name} is not installed on this host")
    try:
        options = parse_options(compiler.options_type, call.options)
    except (OptionsError, TypeError) as exc:
        raise BadJob(f"compilers.{call.name}: {exc}") from None
    root = out_dir / "package"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    try:
        result = compiler.compile(model_path, root, job.target, options)
    except CompilerError as exc:
        raise PackageFailed(f"{call.name}: {exc}") from None
    lap("compile")

    stage("selftest")
    input_names = [i["name"] for i in inputs]
    output_names = [o["name"] for o in outputs]
    add_runtime(root, [compiler.engine])
    manifest: dict[str, Any] = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": job.name,
        "version": job.version,
        "target": vars(job.target),
        "source": {
            "filename": job.model,
            "sha256": job.model_sha256,
            "opsets": opsets(model),
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
        },
        "inputs": inputs,
        "outputs": outputs,
        "compiler": {
            "name": call.name,
            "version": compiler_version,
            "options": vars(options),
            "reproducible": result.reproducible,
        },
        "engines": {compiler.engine: {"version": compiler_version}},
        "artifacts": [vars(a) for a in result.artifacts],
        "tolerance": {"atol": job.atol, "rtol": job.rtol},
        "samples": {
            "origin": origin,
            "inputs": _write_samples(root, "input", feeds, input_names),
            "reference": _write_samples(root, "reference", reference, output_names),
            "reference_engine": "onnxruntime (optimisations disabled, fp32)",
        },
        "provenance": {
            **job.provenance,
            "packager_version": __version__,
            "build_platform": env.to_json(),
        },
    }
    write_manifest(root, manifest)
    selftests = {}
    for artifact in result.artifacts:
        if artifact.role == "auxiliary":
            continue
        try:
            selftests[artifact.path] = load_package(root, artifact=artifact.path).self_test()
        except Exception as exc:  # an engine failing on the samples is a package failure
            raise PackageFailed(f"self-test of {artifact.path}: the engine failed: {exc}") from None
    manifest["selftest"] = {
        "passed": all(c.passed for c in selftests.values()),
        "ran_on": f"{env.os}/{env.arch}",
        "artifacts": {path: c.to_json() for path, c in selftests.items()},
    }
    write_manifest(root, manifest)
    failing = {p: c for p, c in selftests.items() if not c.passed}
    if failing:
        raise PackageFailed("; ".join(f"self-test of {p} failed: {c.summary()}" for p, c in failing.items()))
    lap("selftest")

    stage("archive")
    archive = out_dir / package_filename(job.name, job.version, job.target.name)
    write_archive(root, archive)
    shutil.rmtree(root)
    lap("archive")
    return {
        "package": archive.name,
        "sha256": sha256_file(archive),
        "size": archive.stat().st_size,
        "timings": timings,
        "selftest": manifest["selftest"],
    }
