"""One packaging job, start to finish, on the build host.

platform check → model check → functions fused into the graph (function library) and
checked against their NumPy reference → samples and reference outputs → normalisation
→ candidates (algorithm library) and variants (acceleration library) → test script
(accuracy gate, benchmark, choice) → package layout → self-test of the winner through
the shipped runtime → archive.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from .. import __version__
from ..runtime import load as load_package
from ..runtime.checks import compare_outputs, sha256_file
from ..runtime.engines import OnnxRuntimeRunner, open_artifact, usable_providers
from ..runtime.functions import FunctionsRunner, apply_pre
from . import environment
from .environment import CompileEnvironment
from .accelerate import ALWAYS_APPLIED, VariantError, load_calibration
from .compilers import call_problem, registry
from .functions import Resolved, fuse, is_tap, tap_name
from .functions import resolve as resolve_functions
from .job import BadJob, Job, PackageFailed, package_filename
from .causes import exception_cause
from .evaluate import GateTensors, sample_digest, save_sample_list, split
from .golden import Golden, make_golden
from .normalise import SizeSet, normalise
from .package import add_runtime, write_archive, write_manifest
from .samples import input_hints, signature_ranges
from .selection import (
    Candidate,
    CompileSetting,
    Measurement,
    benchmark_all,
    choose,
    compare_with_baselines,
    compile_all,
    gate_all,
)
from .signature import ANONYMOUS, load_onnx, opsets, signature

MANIFEST_SCHEMA_VERSION = 1
BENCHMARK = {"warmup_s": 0.1, "budget_s": 0.4, "min_runs": 5, "max_runs": 100_000}


def _write_samples(root: Path, kind: str, arrays: dict[str, np.ndarray], names: list[str],
                   point: str = "bench") -> dict[str, str]:
    """Save arrays as ``samples/[<point>/]<kind>-<index>.npy``: tensor names may contain
    any character, so files are named by position and the manifest maps names to files."""
    folder = "samples" if point == "bench" else f"samples/{point}"
    (root / folder).mkdir(parents=True, exist_ok=True)
    table = {}
    for index, name in enumerate(names):
        rel = f"{folder}/{kind}-{index}.npy"
        np.save(root / rel, np.array(arrays[name], order="C"), allow_pickle=False)  # keeps 0-d scalars 0-d
        table[name] = rel
    return table


def _tensor(name: str, array: np.ndarray, dynamic: list[int | str] | None = None) -> dict[str, Any]:
    """A tensor's manifest entry from a sample; a length that depends on the data (a
    detector's number of boxes) stays symbolic."""
    shape: list[int | str] = list(array.shape)
    if dynamic and len(dynamic) == len(shape):
        shape = [d if isinstance(d, str) else n for d, n in zip(dynamic, shape)]
    return {"name": name, "dtype": "string" if array.dtype.kind == "U" else array.dtype.name, "shape": shape}


def _input_signature(package_in: list[dict[str, Any]], golden: Golden, static: bool) -> list[dict[str, Any]]:
    """The package's inputs: dynamic dimensions kept with the sizes they accept
    (``range``: per axis None, or [min, max] with max None for any size), unless the
    shipped artifact runs at the benchmark size only."""
    bench = golden.shapes(0)
    ranges = {} if static else signature_ranges(package_in, golden.dims)
    entries = []
    for spec in package_in:
        name = spec["name"]
        row = list(ranges.get(name, []))
        shape: list[int | str] = []
        for axis, (declared, size) in enumerate(zip(spec["shape"], bench[name])):
            free = row and row[axis] is not None and f"{name}[{axis}]" not in golden.pinned
            shape.append((declared if declared != ANONYMOUS else f"{name}:{axis}") if free else size)
            if row and not free:
                row[axis] = None
        entry = {"name": name, "dtype": spec["dtype"], "shape": shape}
        if any(r is not None for r in row):
            entry["range"] = row
        entries.append(entry)
    return entries


def _output_signature(names: list[str], references: list[dict[str, np.ndarray]],
                      declared: dict[str, list[int | str]], dynamic: dict[str, list[int | str]]) -> list[dict[str, Any]]:
    """The package's outputs: a dimension that changed across the checked sizes is
    dynamic (named as the model names it), and so is a length that depends on the data
    (a detector's number of boxes)."""
    entries = []
    for name in names:
        shapes = [np.shape(r[name]) for r in references]
        model_dims, data_dims = declared.get(name, []), dynamic.get(name) or []
        shape: list[int | str] = []
        for axis, size in enumerate(shapes[0]):
            if axis < len(data_dims) and isinstance(data_dims[axis], str):
                shape.append(data_dims[axis])
            elif all(s[axis] == size for s in shapes):
                shape.append(int(size))
            elif axis < len(model_dims) and isinstance(model_dims[axis], str) and model_dims[axis] != ANONYMOUS:
                shape.append(model_dims[axis])
            else:
                shape.append(f"{name}:{axis}")
        entries.append(_tensor(name, references[0][name]) | {"shape": shape})
    return entries


#: lowest Android API level of each engine's official Android build (its AAR or SDK)
ANDROID_MIN_API = {"onnxruntime": 24, "mnn": 21, "ncnn": 24}


def android_facts(engine: str, version: str | None) -> dict[str, Any]:
    """What an Android integrator needs, and what was not done: no device ran the package."""
    return {
        "abi": "arm64-v8a",
        "min_api_level": ANDROID_MIN_API.get(engine),
        "runtime": {"engine": engine, "version": version,
                    "note": f"the app needs {engine} {version} for Android (same major.minor)"},
        "checked_on": "linux/aarch64 with the same engine versions (numerical self-test)",
        "device_tested": False,
        "note": "no Android device ran this package; its model files were checked numerically on Linux arm64",
    }


def ios_facts(winner: Any, candidates: list[Any]) -> dict[str, Any]:
    """What an iOS integrator needs: the runtime, the execution providers the package asks
    for (and which of them the macOS self-test had), the Core ML model's compile state,
    and that no iOS device ran it."""
    requested = next((a.get("runtime", {}).get("execution_providers") for a in winner.artifacts
                      if a.get("runtime", {}).get("execution_providers")), None)
    facts: dict[str, Any] = {
        "arch": "arm64",
        "runtime": {"engine": winner.engine, "version": winner.version,
                    "note": {"onnxruntime": f"the app needs the onnxruntime {winner.version} pod"
                                            " (onnxruntime-objc or onnxruntime-c), which has the CoreML provider",
                             "coreml": "Core ML is part of iOS; no runtime to ship"}.get(winner.engine)},
        "checked_on": "macos/aarch64 (numerical self-test on the build host)",
        "device_tested": False,
        "note": "no iOS device ran this package; its model files were checked numerically on macOS",
    }
    if requested:
        facts["execution_providers"] = requested
        facts["providers_in_self_test"] = [p if isinstance(p, str) else p[0] for p in usable_providers(requested)]
    coreml = [c for c in candidates if c.compiler == "coreml"]
    if coreml:
        facts["core_ml"] = {c.id: {"status": c.status, "notes": c.notes or [c.reason]} for c in coreml}
    return facts


def self_test_scope(target: Any, env: CompileEnvironment) -> dict[str, Any]:
    """Which checks ran on the target's own OS, and which could not: a package for a
    device OS is self-tested on the build host's OS with the same engine versions."""
    on_target = env.os == target.os
    scope: dict[str, Any] = {"ran_on": f"{env.os}/{env.arch}", "target_os": target.os, "on_target_os": on_target}
    if not on_target:
        scope["not_checked"] = [f"loading and running the package on {target.os} itself"]
    return scope


def _stack(samples: list[dict[str, np.ndarray]], path: Path) -> str:
    np.savez(path, **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    return str(path)


def _evaluation_set(in_dir: Path, job: Job, runner: Any,
                    work: Path) -> tuple[dict[str, str] | None, Path | None, dict[str, Any] | None]:
    """The held-out samples that judge the variants and the fp32 reference's outputs on
    them (model outputs' taps included), the calibration samples int8 may use, and the
    record of the split. Data that calibrates a variant never judges it: without an
    ``evaluation`` file, the calibration samples are split (seeded, half held out)."""
    calibration = in_dir / job.calibration if job.calibration else None
    if not any(c.variant for c in job.compilers) and not job.gate:
        return None, calibration, None
    work.mkdir(parents=True, exist_ok=True)
    calibrating = load_calibration(calibration) if calibration else []
    if job.evaluation:
        held = load_calibration(in_dir / job.evaluation)
        record: dict[str, Any] = {"source": "the spec's evaluation file", "held_out": len(held),
                                  "calibration": len(calibrating)}
    elif calibrating:
        seed = int(sha256_file(calibration)[:8], 16)
        kept, held_out = split(len(calibrating), seed)
        held = [calibrating[i] for i in held_out]
        calibrating = [calibrating[i] for i in kept]
        calibration = Path(_stack(calibrating, work / "calibration-part.npz"))
        record = {"source": "the spec's calibration samples, split", "seed": seed, "held_out": len(held),
                  "calibration": len(calibrating)}
    else:
        return None, None, None
    if not held:
        record["note"] = "no held-out samples: variants are judged by the tolerance on the golden samples only"
        return None, calibration, record
    record["held_out_digests"] = [sample_digest(s) for s in held]
    record["calibration_digests"] = [sample_digest(s) for s in calibrating]
    outputs = [runner.run(feed) for feed in held]
    paths = {"inputs": save_sample_list(held, work / "evaluation-inputs.npz"),
             "reference": save_sample_list(outputs, work / "evaluation-reference.npz")}
    return paths, calibration, record


def _gate_tensors(source_outputs: list[dict[str, Any]], resolved: Resolved | None) -> GateTensors:
    """What the gates read: each model output as the package graph carries it (its tap
    where fused post steps read it), and the fused top-k / detections outputs."""
    model = {o["name"]: o["name"] for o in source_outputs}
    found: dict[str, str] = {}
    if resolved and resolved.post:
        source = resolved.post[0]["output"]
        model[source] = tap_name(source)
        for step in resolved.post:
            if step["op"] == "topk":
                found["indices"] = step["indices"]
            elif step["op"] == "detections":
                found.update(boxes=step["boxes"], scores=step["scores"], classes=step["classes"])
    return GateTensors(model, **found)


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
        env = environment.detect(job.target)
    except environment.PlatformMismatch as exc:
        raise BadJob(str(exc)) from None
    model_path = in_dir / job.model
    if not model_path.is_file():
        raise BadJob(f"{job.model}: not in the job's input folder; the transfer was incomplete")
    if sha256_file(model_path) != job.model_sha256:
        raise BadJob(f"{job.model}: sha256 differs from the controller's; the transfer was corrupted")
    compilers = registry()
    for call in job.compilers:
        problem = call_problem(call.name, call.options, call.variant)
        if problem:
            raise BadJob(f"compilers: {problem}")
    work = out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    lap("platform")

    stage("reference")
    try:
        model = load_onnx(model_path)
        source_inputs, source_outputs = signature(model)
        resolved, graph_path, fusion_notes, graph_model = None, model_path, [], model
        if job.functions:
            stage("functions: fuse")
            resolved = resolve_functions(model, job.functions, job.functions.get("labels", {}))
            graph_model, fusion_notes = fuse(model, resolved)
            graph_path = work / "fused.onnx"
            onnx.save(graph_model, str(graph_path))
            package_in, package_out = signature(graph_model)
            package_out = [o for o in package_out if not is_tap(o["name"])]
        else:
            package_in, package_out = source_inputs, source_outputs
        runtime_steps = {"pre": [], "post": resolved.runtime} if resolved and resolved.runtime else None
        reference_runner: Any = OnnxRuntimeRunner(graph_path, {"optimization": "disabled"})
        if runtime_steps:
            reference_runner = FunctionsRunner(reference_runner, [], resolved.runtime)
        golden = make_golden(package_in, job.shapes, in_dir / job.samples if job.samples else None, job.samples,
                             job.model_sha256, input_hints(graph_model), reference_runner)
        feeds, reference = golden.sets[0].feeds, golden.sets[0].reference
        function_check = None
        if resolved:
            stage("functions: check against NumPy")
            plain = OnnxRuntimeRunner(model_path, {"optimization": "disabled"})
            numpy_way = FunctionsRunner(plain, resolved.pre, resolved.post + resolved.runtime).run(feeds)
            function_check = compare_outputs(numpy_way, reference, job.atol, job.rtol)
            if not function_check.passed:
                raise PackageFailed(f"the fused functions disagree with their NumPy reference:"
                                    f" {function_check.summary()}")
        evaluation, calibration, evaluation_record = _evaluation_set(in_dir, job, reference_runner,
                                                                      work / "evaluation")
    except (ValueError, VariantError) as exc:
        raise PackageFailed(f"model: {exc}") from None
    except PackageFailed:
        raise
    except Exception as exc:  # the reference engine rejecting the model is a package failure
        raise PackageFailed(f"reference run under onnxruntime failed: {exception_cause(exc)}") from None
    dynamic = resolved.dynamic_outputs() if resolved else {}
    input_names = [i["name"] for i in package_in]
    graph_names = [o["name"] for o in package_out]
    output_names = graph_names + [s["result"] for s in (resolved.runtime if resolved else [])]
    tensors = _gate_tensors(source_outputs, resolved)
    taps = [t for t in tensors.model.values() if is_tap(t)]
    declared_outputs = {o["name"]: o["shape"] for o in package_out}
    inputs = [_tensor(n, feeds[n]) for n in input_names]
    outputs = _output_signature(output_names, [s.reference for s in golden.sets], declared_outputs, dynamic)
    samples_root = work / "golden"
    sizes = [{"point": size.point,
              "inputs": {n: str(samples_root / p) for n, p in
                         _write_samples(samples_root, "input", size.feeds, input_names, size.point).items()},
              "reference": {n: str(samples_root / p) for n, p in
                            _write_samples(samples_root, "reference", size.reference, output_names + taps,
                                           size.point).items()}}
             for size in golden.sets]
    lap("reference")

    stage("normalise")
    graph_sets = [SizeSet(s.point, s.feeds, {n: s.reference[n] for n in graph_names}) for s in golden.sets]
    normalised = normalise(graph_path, graph_sets, job.atol, job.rtol, work / "normalise")
    lap("normalise")

    stage("compile")
    graph_outputs = [o for o in outputs if o["dtype"] != "string"]
    setting = CompileSetting(normalised.dynamic, inputs,
                             [_tensor(o["name"], reference[o["name"]], dynamic.get(o["name"])) for o in graph_outputs]
                             + [_tensor(t, reference[t]) for t in taps],
                             fixed_model=normalised.fixed, alternate_inputs=_alternate_inputs(golden, inputs),
                             calibration=calibration, runtime_functions=runtime_steps,
                             functions="graph" if resolved else None)
    candidates = compile_all(job.compilers, compilers, job.target, setting, work / "candidates",
                             job.worker_timeout, progress=stage)
    lap("compile")

    stage("select")
    measurement = Measurement(sizes, job.atol, job.rtol, job.fixed_shapes, job.gate, evaluation,
                              str(in_dir / job.metric_file) if job.metric_file else None, tensors.to_json())
    gate_all(candidates, measurement, work / "measure", job.worker_timeout, progress=stage)
    if resolved and resolved.fallback == "runtime":
        candidates += _runtime_fallbacks(job, compilers, candidates, model_path, golden, resolved, setting,
                                         measurement, work, stage)
    benchmark = None
    if len(candidates) > 1 or {"latency_budget_ms", "metric"} & set(job.select):
        benchmark = {**BENCHMARK, "budget_s": float(job.select.get("benchmark_s", BENCHMARK["budget_s"]))}
        benchmark_all(candidates, measurement, work / "measure", job.worker_timeout, benchmark, progress=stage)
    compare_with_baselines(candidates)
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
        dest, source = root / artifact["path"], winner.root / artifact["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():  # bundles such as Core ML's .mlpackage
            shutil.copytree(source, dest)
        else:
            shutil.copyfile(source, dest)
    add_runtime(root, [compilers[winner.compiler].distribution])
    # A variant judged by a task-level criterion is not within the fp32 tolerance by
    # design: its self-test checks that a device reproduces the build host's outputs.
    own_reference = bool(winner.variant and winner.task_gate)
    shipped = golden.sets[:1] if winner.static else golden.sets
    if own_reference:
        runner = open_artifact(winner.engine, winner.root / winner.artifacts[0]["path"],
                               winner.artifacts[0].get("runtime", {}))
        shipped = [SizeSet(s.point, s.feeds, runner.run(s.feeds)) for s in shipped]
    if winner.static:
        outputs = _output_signature(output_names, [reference], declared_outputs, dynamic)
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
        "inputs": _input_signature(package_in, golden, bool(winner.static)),
        "outputs": outputs,
        "shapes": {
            "fixed_shapes_policy": job.fixed_shapes,
            "static": winner.static,
            "checked": {size.point: {n: list(v.shape) for n, v in size.feeds.items()} for size in shipped},
            "pinned": golden.pinned or None,
        },
        "normalisation": {**normalised.record,
                          "compiled_from": {c.id: ("fixed" if c.fixed_shapes else "dynamic") for c in candidates
                                            if c.status not in ("unsupported", "unavailable")}},
        "compiler": {"name": winner.compiler, "version": winner.version, "options": winner.options,
                     "variant": winner.variant, "reproducible": winner.reproducible},
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
            "origin": golden.origin,
            "inputs": _write_samples(root, "input", feeds, input_names),
            "reference": _write_samples(root, "reference", shipped[0].reference, output_names),
            "sizes": [{"point": size.point,
                       "inputs": _write_samples(root, "input", size.feeds, input_names, size.point),
                       "reference": _write_samples(root, "reference", size.reference, output_names, size.point)}
                      for size in shipped[1:]],
            "reference_engine": (f"the selected variant {winner.id} on the build host (accepted by"
                                 f" {winner.task_gate['criterion']})" if own_reference else
                                 "onnxruntime (optimisations disabled, fp32) on the source model"
                                 + (" with the functions fused" if resolved else "")),
        },
        "provenance": {**job.provenance, "packager_version": __version__, "build_platform": env.to_json()},
    }
    if any(c.variant for c in job.compilers) or job.gate:
        manifest["acceleration"] = {
            "variants": [c.variant for c in job.compilers if c.variant],
            "always_applied": ALWAYS_APPLIED,
            "gate": job.gate or {"tolerance": {"atol": job.atol, "rtol": job.rtol}},
            "gate_reads": tensors.to_json(),
            "evaluation": evaluation_record,
        }
    if job.target.os == "android":
        manifest["android"] = android_facts(winner.engine, winner.version)
    if job.target.os == "ios":
        manifest["ios"] = ios_facts(winner, candidates)
    if resolved:
        applied = "runtime" if winner.functions == "runtime" else "graph"
        manifest["functions"] = {
            **resolved.to_json(),
            "applied_by": applied,
            "preparation": fusion_notes,
            "check": function_check.to_json() if function_check else None,
        }
        labels = next((s["labels"] for s in resolved.runtime if s["op"] == "labels"), None)
        if labels:  # at most one top-k step, so at most one label list
            (root / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
            manifest["functions"]["labels_file"] = "labels.txt"
    write_manifest(root, manifest)

    stage("selftest")
    selftests = {}
    for artifact in winner.artifacts:
        if artifact["role"] == "auxiliary":
            continue
        try:
            selftests[artifact["path"]] = load_package(root, artifact=artifact["path"]).self_test()
        except Exception as exc:  # an engine failing on the samples is a package failure
            raise PackageFailed(f"self-test of {artifact['path']}: the engine failed: {exception_cause(exc)}") from None
    manifest["selftest"] = {
        "passed": all(c.passed for c in selftests.values()),
        **self_test_scope(job.target, env),
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


def _alternate_inputs(golden: Golden, inputs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The inputs at a second checked size (the largest first), for converters that keep
    dimensions dynamic only when shown two sizes."""
    by_point = {size.point: size for size in golden.sets[1:]}
    chosen = next((by_point[p] for p in ("max", "probe", "min") if p in by_point), None)
    if chosen is None:
        return None
    return [{**i, "shape": list(chosen.feeds[i["name"]].shape)} for i in inputs]


def _runtime_fallbacks(job: Job, compilers: dict[str, Any], candidates: list[Candidate], model_path: Path,
                       golden: Golden, resolved: Resolved, fused: CompileSetting,
                       measurement: Measurement, work: Path, stage: Callable[[str], None]) -> list[Candidate]:
    """Candidates whose engine could not take the fused graph, rebuilt from the plain
    model with the runtime applying the functions in NumPy (the spec's fallback)."""
    broken = [c for c in candidates if c.status in ("failed", "crashed")]
    if not broken:
        return []
    for c in broken:
        c.reason = f"{c.reason} (with the functions fused; retried with the functions in the runtime)"
    model_inputs, model_outputs = signature(load_onnx(model_path))
    plain_runner = OnnxRuntimeRunner(model_path, {"optimization": "disabled"})
    plain_sets = []
    for size in golden.sets:
        model_feeds = apply_pre(size.feeds, resolved.pre)
        plain_sets.append(SizeSet(size.point, model_feeds, plain_runner.run(model_feeds)))
    plain = normalise(model_path, plain_sets, job.atol, job.rtol, work / "plain-normalise")
    model_feeds, reference = plain_sets[0].feeds, plain_sets[0].reference
    second = plain_sets[1].feeds if len(plain_sets) > 1 else None
    setting = CompileSetting(
        plain.dynamic, [_tensor(i["name"], model_feeds[i["name"]]) for i in model_inputs],
        [_tensor(o["name"], reference[o["name"]]) for o in model_outputs],
        fixed_model=plain.fixed,
        alternate_inputs=[_tensor(i["name"], second[i["name"]]) for i in model_inputs] if second else None,
        calibration=fused.calibration if not resolved.pre else None,
        runtime_functions={"pre": resolved.pre, "post": resolved.post + resolved.runtime}, functions="runtime",
        suffix=" (functions in runtime)")
    calls = [c.call for c in broken if c.call is not None]
    retried = compile_all(calls, compilers, job.target, setting, work / "fallback", job.worker_timeout, progress=stage)
    gate_all(retried, measurement, work / "fallback-measure", job.worker_timeout, progress=stage)
    return retried
