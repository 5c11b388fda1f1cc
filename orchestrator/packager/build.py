"""One packaging job, start to finish, on the build host.

``build()`` is the sequence of steps, each a function that takes what the earlier ones
found and returns a small dataclass: platform check → model check, functions fused into
the graph (function library) and checked against their NumPy reference, samples and
reference outputs → normalisation → candidates (algorithm library) and variants
(acceleration library) → test script (accuracy gate, benchmark, choice) → package layout
and manifest (packager/manifest.py) → self-test of the winner through the shipped
runtime → archive.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from ..runtime import load as load_package
from ..runtime.checks import Tolerance, compare_outputs, sha256_file
from ..runtime.engines import OnnxRuntimeRunner, open_artifact
from ..runtime.functions import TAP_PREFIX, FunctionsRunner, apply_pre
from . import environment
from .accelerate import VariantError, load_calibration
from .causes import exception_cause
from .compilers import call_problem, registry
from .data_dependent import dense_sources, empty_everywhere, with_taps
from .evaluate import GateTensors, sample_digest, save_sample_list, split
from .functions import Resolved, fuse, is_tap, tap_name
from .functions import resolve as resolve_functions
from .golden import Golden, make_golden, one_size_ranges
from .job import BadJob, Job, PackageFailed, package_filename
from .manifest import output_signature, self_test_scope, tensor_entry, write_manifest_data, write_samples
from .normalise import Normalised, SizeSet, normalise, pinned_shapes
from .stages import Checked, Reference, Selected
from .package import add_runtime, write_archive, write_manifest
from .samples import input_hints
from .selection import (
    Candidate,
    CompileSetting,
    Measurement,
    benchmark_all,
    choose,
    compare_with_baselines,
    compile_all,
    gate_all,
    with_runtime,
)
from .lease import benchmark_lease
from .ranking import MAX_ROUNDS, MIN_ROUNDS
from .tuning import leading, tune
from .ort_ops import nonstandard_ops
from .signature import (
    ModelError, load_onnx, maps_as_tensors, signature, unranked_inputs, unshaped_outputs, zipmap_outputs,
)

BENCHMARK = {"warmup_s": 0.1, "budget_s": 0.4, "min_runs": 5, "max_runs": 100_000}

Stage = Callable[[str], None]


class Laps:
    """Seconds per step, for the result's ``timings``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 4)
        self._clock = now


def build(job: Job, in_dir: Path, out_dir: Path, stage: Stage) -> dict[str, Any]:
    lap = Laps()
    stage("platform")
    checked = check_job(job, in_dir, out_dir)
    lap("platform")
    stage("reference")
    reference = make_reference(job, in_dir, checked, stage)
    if reference.measured_tolerance is not None:  # the gate every later step holds to
        measured = reference.measured_tolerance.to_json()
        job = dataclasses.replace(job, atol=measured["atol"], output_tolerance=measured.get("outputs", {}))
    lap("reference")
    stage("normalise")
    normalised = normalise_graph(job, reference, checked.work)
    lap("normalise")
    stage("compile")
    setting, candidates = compile_candidates(job, checked, reference, normalised, stage)
    lap("compile")
    stage("select")
    selected = select(job, in_dir, checked, reference, setting, candidates, stage)
    lap("select")
    stage("package")
    root, manifest = lay_out(job, checked, reference, normalised, selected, out_dir)
    stage("selftest")
    self_test(job, checked, root, manifest, selected.winner)
    lap("selftest")
    stage("archive")
    archive = out_dir / package_filename(job.name, job.version, job.target.name)
    write_archive(root, archive)
    shutil.rmtree(root)
    shutil.rmtree(checked.work)
    lap("archive")
    winner = selected.winner
    return {
        "package": archive.name,
        "sha256": sha256_file(archive),
        "size": archive.stat().st_size,
        "timings": lap.timings,
        "selftest": manifest["selftest"],
        "selected": {"candidate": winner.id, "engine": winner.engine, "latency_ms": (winner.latency or {}).get("median")},
    }


def check_job(job: Job, in_dir: Path, out_dir: Path) -> Checked:
    """Refuse a job this host must not build (another platform, a broken transfer, a
    compiler call this packager does not know) before any work."""
    try:
        env = environment.detect(job.target)
    except environment.PlatformMismatch as exc:
        raise BadJob(str(exc)) from None
    model_path = in_dir / job.model
    if not model_path.is_file():
        raise BadJob(f"{job.model}: not in the job's input folder; the transfer was incomplete")
    if sha256_file(model_path) != job.model_sha256:
        raise BadJob(f"{job.model}: sha256 differs from the controller's; the transfer was corrupted")
    for location, sha256 in job.model_data.items():
        data = model_path.parent / location
        if not data.resolve().is_relative_to(model_path.parent.resolve()):
            raise BadJob(f"{job.model}: external data {location!r} is outside the model's folder")
        if data.is_symlink() or not data.is_file():
            raise BadJob(f"{job.model}: external data {location!r} is not in the job's input folder; the transfer"
                         f" was incomplete")
        if sha256_file(data) != sha256:
            raise BadJob(f"{job.model}: external data {location!r}: sha256 differs from the controller's; the"
                         f" transfer was corrupted")
    for call in job.compilers:
        problem = call_problem(call.name, call.options, call.variant)
        if problem:
            raise BadJob(f"compilers: {problem}")
    work = out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    standard, written, zipmaps = _standard(model_path, job.shapes, work)
    return Checked(env, standard, registry(), work, written, zipmaps)


def _standard(model_path: Path, shapes: dict[str, list[Any]], work: Path
              ) -> tuple[Path, list[str], dict[str, list[Any]]]:
    """The model the packager works from: the one that arrived, or, where it is not
    standard ONNX (an input or output with no shape, onnxruntime's own operators, a
    ZipMap), the standard copy :func:`load_onnx` makes, which every tool after needs;
    what was written, for the manifest; and the ZipMap outputs with their classes."""
    try:
        header = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # not parseable: the reference step reports it as the model's failure
        return model_path, [], {}
    unranked, unshaped, fused = unranked_inputs(header), unshaped_outputs(header), nonstandard_ops(header)
    zipmaps = zipmap_outputs(header)
    if not unranked and not unshaped and not fused and not zipmaps:
        return model_path, [], {}
    try:
        model = load_onnx(model_path, shapes)
    except ModelError as exc:
        raise BadJob(f"model: {exc}") from None
    standard = work / "standard" / "model.onnx"
    standard.parent.mkdir()
    onnx.save(model, str(standard))
    rewritten = sorted(set(fused) - set(nonstandard_ops(model)))
    written = ([f"input {name!r}: rank from shapes" for name in unranked]
               + [f"output {name!r}: shape from onnx's shape inference" for name in unshaped]
               + [f"output {name!r}: ZipMap's maps returned as the [N, {len(labels)}] tensor they are made of,"
                  f" one column per class in the order {labels}" for name, labels in zipmaps.items()]
               + ([f"onnxruntime's {', '.join(rewritten)} written as standard operators"] if rewritten else []))
    return standard, written, zipmaps


def make_reference(job: Job, in_dir: Path, checked: Checked, stage: Stage) -> Reference:
    """Load the model, fuse the functions, make the golden samples and the reference
    outputs, and the held-out evaluation set. Any failure here is the model's."""
    try:
        return _reference(job, in_dir, checked, stage)
    except (ValueError, VariantError) as exc:
        raise PackageFailed(f"model: {exc}") from None
    except PackageFailed:
        raise
    except Exception as exc:  # the reference engine rejecting the model is a package failure
        raise PackageFailed(f"reference run under onnxruntime failed: {exception_cause(exc)}") from None


def _reference(job: Job, in_dir: Path, checked: Checked, stage: Stage) -> Reference:
    model_path, work = checked.model_path, checked.work
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
    reference_runner = _reference_runner(graph_path, resolved)
    golden = make_golden(package_in, job.shapes, in_dir / job.samples if job.samples else None, job.samples,
                         job.model_sha256, input_hints(graph_model), reference_runner)
    original = in_dir / job.model
    if model_path != original and not resolved:  # the standard copy must compute what the model computes
        stage("reference: check the standard copy against the model")
        as_shipped = OnnxRuntimeRunner(original, {"optimization": "disabled"})
        for size in golden.sets:
            check = compare_outputs(maps_as_tensors(as_shipped.run(size.feeds), checked.zipmaps), size.reference,
                                    job.tolerance)
            if not check.passed:
                raise PackageFailed(f"model: written as standard ONNX it computes something else at the {size.point}"
                                    f" size: {check.summary()}")
    function_check = None
    if resolved:
        stage("functions: check against NumPy")
        plain = OnnxRuntimeRunner(model_path, {"optimization": "disabled"})
        bench = golden.sets[0]
        numpy_way = FunctionsRunner(plain, resolved.pre, resolved.post + resolved.runtime).run(bench.feeds)
        function_check = compare_outputs(numpy_way, bench.reference, job.tolerance)
        if not function_check.passed:
            raise PackageFailed(f"the fused functions disagree with their NumPy reference:"
                                f" {function_check.summary()}")
    graph_names = [o["name"] for o in package_out]
    empty = dense_sources(graph_model, empty_everywhere((s.reference for s in golden.sets), graph_names))
    if empty.taps:  # gate what decides the outputs the samples left empty
        stage("reference: tap the tensors that decide the outputs the samples left empty")
        graph_path = work / "tapped.onnx"
        onnx.save(with_taps(graph_model, empty), str(graph_path))
        reference_runner = _reference_runner(graph_path, resolved)
        for size in golden.sets:
            produced = reference_runner.run(size.feeds)
            size.reference.update({tap: produced[tap] for tap in empty.taps.values()})
    evaluation, calibration, evaluation_record = _evaluation_set(in_dir, job, reference_runner, work / "evaluation")
    dynamic = resolved.dynamic_outputs() if resolved else {}
    input_names = [i["name"] for i in package_in]
    output_names = graph_names + [s["result"] for s in (resolved.runtime if resolved else [])]
    tensors = dataclasses.replace(_gate_tensors(source_outputs, resolved), dense=list(empty.taps.values()))
    taps = [t for t in tensors.model.values() if is_tap(t)] + tensors.dense
    declared_outputs = {o["name"]: o["shape"] for o in package_out}
    outputs = output_signature(output_names, [s.reference for s in golden.sets], declared_outputs, dynamic)
    samples_root = work / "golden"
    sizes = [{"point": size.point,
              "inputs": {n: str(samples_root / p) for n, p in
                         write_samples(samples_root, "input", size.feeds, input_names, size.point).items()},
              "reference": {n: str(samples_root / p) for n, p in
                            write_samples(samples_root, "reference", size.reference, output_names + taps,
                                          size.point).items()}}
             for size in golden.sets]
    measured, basis = None, None
    if job.measure_tolerance:
        measured, basis = _quantized_gate(job, graph_path, golden, graph_names + tensors.dense)
    return Reference(model, source_inputs, source_outputs, package_in, graph_path, graph_names, output_names,
                     outputs, declared_outputs, dynamic, golden, sizes, tensors, taps, resolved, runtime_steps,
                     fusion_notes, function_check, evaluation, calibration, evaluation_record, measured, basis,
                     empty.record)


def _reference_runner(graph_path: Path, resolved: Resolved | None) -> Any:
    """onnxruntime, optimisations disabled, on the package graph, with the steps the
    runtime applies (not fused in the graph) applied after it in NumPy."""
    runner: Any = OnnxRuntimeRunner(graph_path, {"optimization": "disabled"})
    return FunctionsRunner(runner, [], resolved.runtime) if resolved and resolved.runtime else runner


def _quantized_gate(job: Job, graph_path: Path, golden: Golden, graph_names: list[str]) -> tuple[Tolerance, str]:
    """The gate of a quantised model: each output's atol is twice the largest difference
    between onnxruntime's own integer kernels (the model as a user runs it) and the
    model's exact semantics (the reference, unoptimised) on that output over every golden
    size, and never below the job's. Engines that round as carefully as onnxruntime pass;
    one that is off by more fails. Each output is measured on its own: a detector's boxes
    deviate by pixels where its scores deviate by hundredths, and one atol for both would
    pass any score. The dense taps behind outputs left empty are measured as outputs,
    under the tensor's own name (what ``Tolerance.of`` reads a tap as). What nothing
    measured (steps the runtime adds) keeps the largest."""
    optimised = OnnxRuntimeRunner(graph_path, {"optimization": "all"})
    deviation: dict[str, float] = {}
    for size in golden.sets:
        produced = optimised.run(size.feeds)
        for name in graph_names:
            want = size.reference[name]
            if np.issubdtype(want.dtype, np.floating) and want.size:
                got = np.asarray(produced[name], np.float64)
                found = float(np.max(np.abs(got - want.astype(np.float64))))
                key = name.removeprefix(TAP_PREFIX)
                deviation[key] = max(deviation.get(key, 0.0), found)
    atol = {name: max(job.atol, float(f"{2 * d:.2g}")) for name, d in deviation.items()}
    tolerance = Tolerance(max([job.atol, *atol.values()]), job.rtol, {n: (a, job.rtol) for n, a in atol.items()})
    each = ", ".join(f"{name!r} {d:.3g}" for name, d in deviation.items())
    return tolerance, (f"a quantised model: each output's atol is twice the difference between onnxruntime's own"
                       f" kernels and its exact semantics on the golden samples ({each})")


def normalise_graph(job: Job, reference: Reference, work: Path) -> Normalised:
    """The dynamic and fixed-shape models the compilers start from, each verified."""
    checked = reference.graph_names + reference.tensors.dense
    graph_sets = [SizeSet(s.point, s.feeds, {n: s.reference[n] for n in checked}) for s in reference.golden.sets]
    golden = reference.golden
    one_size = one_size_ranges(golden.dims)
    pinned = pinned_shapes(golden.pinned, golden.sets[0].feeds)
    forced = pinned_shapes({k: v for k, v in golden.pinned.items() if k not in one_size}, golden.sets[0].feeds)
    return normalise(reference.graph_path, graph_sets, job.tolerance, work / "normalise", pinned, forced)


def compile_candidates(job: Job, checked: Checked, reference: Reference, normalised: Normalised,
                       stage: Stage) -> tuple[CompileSetting, list[Candidate]]:
    """Every compiler call of the job, each in a worker process."""
    bench = reference.golden.sets[0]
    inputs = [tensor_entry(n["name"], bench.feeds[n["name"]]) for n in reference.package_inputs]
    graph_outputs = [o for o in reference.outputs if o["dtype"] != "string"]
    setting = CompileSetting(
        normalised.dynamic, inputs,
        [tensor_entry(o["name"], bench.reference[o["name"]], reference.dynamic.get(o["name"])) for o in graph_outputs]
        + [tensor_entry(t, bench.reference[t]) for t in reference.taps],
        fixed_model=normalised.fixed, folded_model=normalised.folded,
        alternate_inputs=_alternate_inputs(reference.golden, inputs),
        calibration=reference.calibration, runtime_functions=reference.runtime_steps,
        functions="graph" if reference.resolved else None, device=job.device)
    candidates = compile_all(job.compilers, checked.compilers, job.target, setting, checked.work / "candidates",
                             job.worker_timeout, progress=stage)
    return setting, candidates


def select(job: Job, in_dir: Path, checked: Checked, reference: Reference, setting: CompileSetting,
           candidates: list[Candidate], stage: Stage) -> Selected:
    """The test script: gate every candidate, retry the functions in the runtime where
    the spec allows it, benchmark the survivors and choose."""
    work = checked.work
    measurement = Measurement(reference.sizes, job.tolerance.to_json(), job.fixed_shapes, job.gate, reference.evaluation,
                              str(in_dir / job.metric_file) if job.metric_file else None,
                              reference.tensors.to_json(),
                              _gated_as_plain(reference.tensors, reference.model).to_json() if reference.resolved
                              else None)
    gate_all(candidates, measurement, work / "measure", job.worker_timeout, progress=stage)
    first_pass = list(candidates)
    if reference.resolved and reference.resolved.fallback == "runtime":
        candidates += _runtime_fallbacks(job, checked.compilers, candidates, checked.model_path, reference.golden,
                                         reference.resolved, setting, measurement, work, stage)
    candidates += _fixed_shape_retries(job, checked.compilers, first_pass, candidates, setting, measurement, work,
                                       stage)
    measured = len(candidates) > 1 or bool({"latency_budget_ms", "metric"} & set(job.select))
    found, tuning, metric = None, None, job.select.get("metric", "latency")
    if measured:
        benchmark = {**BENCHMARK, "budget_s": float(job.select.get("benchmark_s", BENCHMARK["budget_s"]))}
        cap = int(job.select.get("max_rounds", MAX_ROUNDS))
        if job.provenance.get("emulated"):  # emulated timings rank nothing native: no more than the minimum
            cap = MIN_ROUNDS
        with benchmark_lease(job.benchmark_lease, job.worker_timeout) as lease:
            found = benchmark_all(candidates, measurement, work / "measure", job.worker_timeout, benchmark,
                                  max_rounds=cap, metric=metric, progress=stage)
            compare_with_baselines(candidates)
            winner = choose(candidates, job.select, found.verdict)
            if winner is not None and job.select.get("tune") and metric != "size" and not job.select.get("engine"):
                winner, tuning = _tuned(job, winner, candidates, measurement, work, benchmark, metric, cap, stage)
        found.lease = lease
    else:
        compare_with_baselines(candidates)
        winner = choose(candidates, job.select, None)
    if winner is None:
        why = "; ".join(f"{c.id}: {c.status}: {c.reason}" for c in candidates)
        forced = job.select.get("engine")
        prefix = f"the forced engine {forced} did not pass" if forced else "no candidate passed"
        raise PackageFailed(f"{prefix} ({why})")
    return Selected(candidates, winner, measured, found, tuning)


def _tuned(job: Job, winner: Candidate, candidates: list[Candidate], measurement: Measurement, work: Path,
           benchmark: dict[str, Any], metric: str, cap: int, stage: Stage) -> tuple[Candidate, dict[str, Any]]:
    """The runtime-settings search (tuning.py): the chosen settings go into the chosen
    candidate's artifacts, and a tuned runner-up that beats the winner ships instead."""
    chosen, settings, record = tune(leading(candidates, winner, metric), measurement, work / "tune",
                                    job.worker_timeout, benchmark, job.device, metric, cap,
                                    lambda line: stage(line.replace("select: benchmark", "select: tune")))
    with_runtime(chosen.artifacts, settings)
    if chosen is not winner:
        winner.status, winner.reason = "passed", f"{winner.reason}; but {chosen.id} with {settings} is faster"
        chosen.status, chosen.reason = "selected", f"fastest once tuned ({settings})"
    elif settings:
        chosen.reason = f"{chosen.reason}; tuned: {settings}"
    return chosen, record


def lay_out(job: Job, checked: Checked, reference: Reference, normalised: Normalised, selected: Selected,
            out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The package folder: the winner's artifacts, the runtime, the golden samples and
    the manifest."""
    winner = selected.winner
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
    add_runtime(root, [checked.compilers[winner.compiler].distribution])
    # A variant judged by a task-level criterion is not within the fp32 tolerance by
    # design: its self-test checks that a device reproduces the build host's outputs.
    own_reference = bool(winner.variant and winner.task_gate)
    golden = reference.golden
    shipped = golden.sets[:1] if winner.static else golden.sets
    if own_reference:
        runner = open_artifact(winner.engine, winner.root / winner.artifacts[0]["path"],
                               winner.artifacts[0].get("runtime", {}))
        shipped = [SizeSet(s.point, s.feeds, runner.run(s.feeds)) for s in shipped]
    outputs = reference.outputs
    if winner.static:
        outputs = output_signature(reference.output_names, [golden.sets[0].reference], reference.declared_outputs,
                                   reference.dynamic)
    record = {**normalised.record, **({"standard": checked.standard} if checked.standard else {})}
    manifest = write_manifest_data(root, job, checked.env, reference, record, selected, shipped, outputs,
                                   own_reference)
    write_manifest(root, manifest)
    return root, manifest


def self_test(job: Job, checked: Checked, root: Path, manifest: dict[str, Any], winner: Candidate) -> None:
    """Run every runnable artifact through the shipped runtime on the golden samples;
    the result goes into the manifest, and a failure fails the job."""
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
        **self_test_scope(job.target, checked.env),
        "artifacts": {path: c.to_json() for path, c in selftests.items()},
    }
    write_manifest(root, manifest)
    failing = {p: c for p, c in selftests.items() if not c.passed}
    if failing:
        raise PackageFailed("; ".join(f"self-test of {p} failed: {c.summary()}" for p, c in failing.items()))


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


def _alternate_inputs(golden: Golden, inputs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The inputs at a second checked size (the largest first), for converters that keep
    dimensions dynamic only when shown two sizes."""
    by_point = {size.point: size for size in golden.sets[1:]}
    chosen = next((by_point[p] for p in ("max", "probe", "min") if p in by_point), None)
    if chosen is None:
        return None
    return [{**i, "shape": list(chosen.feeds[i["name"]].shape)} for i in inputs]


def _fixed_shape_retries(job: Job, compilers: dict[str, Any], first_pass: list[Candidate], candidates: list[Candidate],
                         setting: CompileSetting, measurement: Measurement, work: Path,
                         stage: Callable[[str], None]) -> list[Candidate]:
    """Candidates that failed on the dynamic model, compiled again from the fixed-shape
    one. A dynamic graph keeps checks that only its run-time shapes decide (Silero VAD's
    If on a rank, which OpenVINO's CPU plug-in refuses); with every input at its
    benchmark size they fold away. A retry runs at that size only, so the spec's
    ``fixed_shapes`` policy decides whether it may ship unless the package is static
    anyway, and the reason says so either way. A candidate that ran out of time is not
    retried: a hung converter would cost the job its time limit twice."""
    if setting.fixed_model is None:
        return []
    first = {id(c) for c in first_pass}
    rescued = {id(c.call) for c in candidates if id(c) not in first and c.status in ("passed", "selected")}
    broken = [c for c in first_pass if c.status in ("failed", "crashed") and not c.fixed_shapes and not c.timed_out
              and c.call is not None and id(c.call) not in rescued]
    if not broken:
        return []
    for c in broken:
        c.reason = f"{c.reason} (from the dynamic model; retried from the fixed-shape model)"
    fixed = dataclasses.replace(setting, fixed_for_all=True, suffix=f"{setting.suffix} (fixed shapes)")
    retried = compile_all([c.call for c in broken if c.call is not None], compilers, job.target, fixed,
                          work / "fixed-retry", job.worker_timeout, progress=stage)
    gate_all(retried, measurement, work / "fixed-retry-measure", job.worker_timeout, progress=stage)
    return retried


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
    plain = normalise(model_path, plain_sets, job.tolerance, work / "plain-normalise")
    model_feeds, reference = plain_sets[0].feeds, plain_sets[0].reference
    second = plain_sets[1].feeds if len(plain_sets) > 1 else None
    setting = CompileSetting(
        plain.dynamic, [tensor_entry(i["name"], model_feeds[i["name"]]) for i in model_inputs],
        [tensor_entry(o["name"], reference[o["name"]]) for o in model_outputs],
        fixed_model=plain.fixed, folded_model=plain.folded,
        alternate_inputs=[tensor_entry(i["name"], second[i["name"]]) for i in model_inputs] if second else None,
        calibration=fused.calibration if not resolved.pre else None,
        runtime_functions={"pre": resolved.pre, "post": resolved.post + resolved.runtime}, functions="runtime",
        suffix=" (functions in runtime)", device=job.device)
    calls = [c.call for c in broken if c.call is not None]
    retried = compile_all(calls, compilers, job.target, setting, work / "fallback", job.worker_timeout, progress=stage)
    gate_all(retried, measurement, work / "fallback-measure", job.worker_timeout, progress=stage)
    return retried


def _gated_as_plain(tensors: GateTensors, plain: onnx.ModelProto) -> GateTensors:
    """What the gates read of a candidate that runs the plain model, the runtime applying
    the functions in NumPy. A dense tap inside the fused functions (the boxes and scores
    a fused NMS decides from, when the samples left its outputs empty) names no tensor
    that candidate has; the model's own output those functions read decides them, and
    the runtime returns it as its tap, so that is gated in their place. A tap of a tensor
    the plain model has (an NMS inside the model itself) stays: the plain model is built
    without it, so such a candidate is rejected ("missing"), never passed unchecked."""
    present = {o for node in plain.graph.node for o in node.output} | {i.name for i in plain.graph.input}
    kept = [t for t in tensors.dense if t.removeprefix(TAP_PREFIX) in present]
    if kept == tensors.dense:
        return tensors
    raw = [t for t in tensors.model.values() if is_tap(t) and t not in kept]
    return dataclasses.replace(tensors, dense=kept + raw)
