"""One packaging job, start to finish, on the build host.

platform check → model check → samples and reference outputs → normalisation →
candidates (algorithm library) → test script (accuracy gate, benchmark, choice) →
package layout → self-test of the winner through the shipped runtime → archive.
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
from .compilers import OptionsError, parse_options, registry
from .job import Job, package_filename
from .normalise import normalise
from .package import add_runtime, write_archive, write_manifest
from .samples import concrete_shapes, load_samples, random_inputs
from .select import choose, compile_all, measure_all
from .signature import load_onnx, opsets, signature

MANIFEST_SCHEMA_VERSION = 1
BENCHMARK = {"warmup_s": 0.1, "budget_s": 0.4, "min_runs": 5, "max_runs": 100_000}


class BadJob(ValueError):
    """The job itself is wrong (mismatched host, corrupt transfer): exit code 2."""


class PackageFailed(RuntimeError):
    """The model could not be packaged as instructed: exit code 1, not retried."""


def _write_samples(root: Path, kind: str, arrays: dict[str, np.ndarray], names: list[str]) -> dict[str, str]:
    """Save arrays as ``samples/<kind>-<index>.npy``: tensor names may contain any
    character, so files are named by position and the manifest maps names to files."""
    (root / "samples").mkdir(parents=True, exist_ok=True)
    table = {}
    for index, name in enumerate(names):
        rel = f"samples/{kind}-{index}.npy"
        np.save(root / rel, np.array(arrays[name], order="C"), allow_pickle=False)  # keeps 0-d scalars 0-d
        table[name] = rel
    return table


def _tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    return {"name": name, "dtype": array.dtype.name, "shape": list(array.shape)}


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
    compilers = registry()
    for call in job.compilers:
        if call.name not in compilers:
            raise BadJob(f"unknown compiler {call.name!r}")
        try:
            parse_options(compilers[call.name].options_type, call.options)
        except (OptionsError, TypeError) as exc:
            raise BadJob(f"compilers.{call.name}: {exc}") from None
    lap("platform")

    stage("reference")
    try:
        model = load_onnx(model_path)
        source_inputs, source_outputs = signature(model)
        if job.samples:
            feeds = load_samples(in_dir / job.samples, source_inputs)
            origin: dict[str, Any] = {"kind": "spec", "file": job.samples}
        else:
            seed = int(job.model_sha256[:8], 16)
            feeds = random_inputs(source_inputs, concrete_shapes(source_inputs, job.shapes), seed)
            origin = {"kind": "random", "seed": seed}
        reference = OnnxRuntimeRunner(model_path, {"optimization": "disabled"}).run(feeds)
    except ValueError as exc:
        raise PackageFailed(f"model: {exc}") from None
    except Exception as exc:  # the reference engine rejecting the model is a package failure
        raise PackageFailed(f"reference run under onnxruntime failed: {exc}") from None
    input_names = [i["name"] for i in source_inputs]
    output_names = [o["name"] for o in source_outputs]
    inputs = [_tensor(n, feeds[n]) for n in input_names]
    outputs = [_tensor(n, reference[n]) for n in output_names]
    work = out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    samples_root = work / "golden"
    samples = {
        "inputs": {n: str(samples_root / p) for n, p in _write_samples(samples_root, "input", feeds, input_names).items()},
        "reference": {n: str(samples_root / p)
                      for n, p in _write_samples(samples_root, "reference", reference, output_names).items()},
    }
    lap("reference")

    stage("normalise")
    normalised = work / "normalised.onnx"
    normalisation = normalise(model_path, {i["name"]: i["shape"] for i in inputs}, normalised)
    lap("normalise")

    stage("compile")
    candidates = compile_all(job.compilers, compilers, job.target, normalised, inputs, outputs,
                             work / "candidates", job.worker_timeout, progress=stage)
    lap("compile")

    stage("select")
    benchmark = None
    if len(job.compilers) > 1 or {"latency_budget_ms", "metric"} & set(job.select):
        benchmark = {**BENCHMARK, "budget_s": float(job.select.get("benchmark_s", BENCHMARK["budget_s"]))}
    measure_all(candidates, samples, job.atol, job.rtol, work / "measure", job.worker_timeout, benchmark,
                progress=stage)
    winner = choose(candidates, job.select)
    emulated = bool(job.provenance.get("emulated", False))
    table = [c.row(emulated) for c in candidates]
    if winner is None:
        why = "; ".join(f"{c.id}: {c.status}: {c.reason}" for c in candidates)
        forced = job.select.get("engine")
        prefix = f"the forced engine {forced} did not pass" if forced else "no candidate passed"
        raise PackageFailed(f"{prefix} ({why})")
    lap("select")

    stage("package")
    root = out_dir / "package"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    assert winner.root is not None
    for artifact in winner.artifacts:
        dest = root / artifact["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(winner.root / artifact["path"], dest)
    add_runtime(root, [compilers[winner.compiler].distribution])
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
            "inputs": source_inputs,
            "outputs": source_outputs,
        },
        "inputs": inputs,
        "outputs": outputs,
        "normalisation": normalisation,
        "compiler": {"name": winner.compiler, "version": winner.version, "options": winner.options,
                     "reproducible": winner.reproducible},
        "engines": {winner.engine: {"version": winner.version}},
        "artifacts": winner.artifacts,
        "candidates": table,
        "selection": {
            "policy": job.select,
            "selected": winner.id,
            "measured": benchmark is not None,
            "emulated": emulated,
            "note": ("latencies were measured under emulation and do not represent native speed"
                     if emulated and benchmark else None),
        },
        "tolerance": {"atol": job.atol, "rtol": job.rtol},
        "samples": {
            "origin": origin,
            "inputs": _write_samples(root, "input", feeds, input_names),
            "reference": _write_samples(root, "reference", reference, output_names),
            "reference_engine": "onnxruntime (optimisations disabled, fp32) on the source model",
        },
        "provenance": {**job.provenance, "packager_version": __version__, "build_platform": env.to_json()},
    }
    write_manifest(root, manifest)

    stage("selftest")
    selftests = {}
    for artifact in winner.artifacts:
        if artifact["role"] == "auxiliary":
            continue
        try:
            selftests[artifact["path"]] = load_package(root, artifact=artifact["path"]).self_test()
        except Exception as exc:  # an engine failing on the samples is a package failure
            raise PackageFailed(f"self-test of {artifact['path']}: the engine failed: {exc}") from None
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
    shutil.rmtree(work)
    lap("archive")
    return {
        "package": archive.name,
        "sha256": sha256_file(archive),
        "size": archive.stat().st_size,
        "timings": timings,
        "selftest": manifest["selftest"],
        "selected": {"candidate": winner.id, "engine": winner.engine, "latency_ms": (winner.latency or {}).get("median")},
    }
