"""The package manifest, written in one place.

``runtime/manifest.py`` defines what a manifest holds and checks it on every read; this
module turns the outcome of the packaging steps (packager/build.py) into one, and
writes the golden samples it names. Keeping the writing here leaves ``build()`` a
readable sequence of steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..runtime.engines import usable_providers
from ..runtime.manifest import SCHEMA_VERSION
from .accelerate import ALWAYS_APPLIED
from .environment import CompileEnvironment
from .golden import Golden
from .normalise import SizeSet
from .job import Job
from .stages import Reference, Selected
from .samples import signature_ranges
from .signature import ANONYMOUS, opsets


def write_samples(root: Path, kind: str, arrays: dict[str, np.ndarray], names: list[str],
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


def tensor_entry(name: str, array: np.ndarray, dynamic: list[int | str] | None = None) -> dict[str, Any]:
    """A tensor's manifest entry from a sample; a length that depends on the data (a
    detector's number of boxes) stays symbolic."""
    shape: list[int | str] = list(array.shape)
    if dynamic and len(dynamic) == len(shape):
        shape = [d if isinstance(d, str) else n for d, n in zip(dynamic, shape)]
    return {"name": name, "dtype": "string" if array.dtype.kind == "U" else array.dtype.name, "shape": shape}


def input_signature(package_in: list[dict[str, Any]], golden: Golden, static: bool) -> list[dict[str, Any]]:
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


def output_signature(names: list[str], references: list[dict[str, np.ndarray]],
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
        entries.append(tensor_entry(name, references[0][name]) | {"shape": shape})
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
    on_target = env.os == target.os and env.emulation is None
    scope: dict[str, Any] = {"ran_on": f"{env.os}/{env.arch}" + (f" under {env.emulation}" if env.emulation else ""),
                             "target_os": target.os, "on_target_os": on_target}
    if env.emulation:  # the OS's own binaries ran, but not on that OS
        scope["emulation"] = env.emulation
        scope["not_checked"] = [f"loading and running the package on {target.os} itself (the self-test ran"
                                f" {env.os}'s binaries of the engines under {env.emulation}, not on {target.os})"]
    elif not on_target:
        scope["not_checked"] = [f"loading and running the package on {target.os} itself"]
    return scope


def write_manifest_data(root: Path, job: Job, env: CompileEnvironment, reference: Reference,
                        normalisation: dict[str, Any], selected: Selected, shipped: list[SizeSet],
                        outputs: list[dict[str, Any]], own_reference: bool) -> dict[str, Any]:
    """The manifest of a package whose artifacts are in ``root``; writes the golden
    samples it names (``shipped``: per checked size, the inputs and the outputs the
    self-test expects). The file table and the self-test are added by the caller."""
    winner, candidates = selected.winner, selected.candidates
    emulated = bool(job.provenance.get("emulated", False)) or env.emulation is not None
    input_names = [i["name"] for i in reference.package_inputs]
    first = shipped[0]
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": job.name,
        "version": job.version,
        "target": vars(job.target),
        "source": {
            "filename": job.model,
            "sha256": job.model_sha256,
            **({"data": dict(job.model_data)} if job.model_data else {}),
            "instructions_sha256": job.instructions_sha256(),
            "opsets": opsets(reference.model),
            "producer": f"{reference.model.producer_name} {reference.model.producer_version}".strip(),
            "inputs": reference.source_inputs,
            "outputs": reference.source_outputs,
        },
        "inputs": input_signature(reference.package_inputs, reference.golden, bool(winner.static)),
        "outputs": outputs,
        "shapes": {
            "fixed_shapes_policy": job.fixed_shapes,
            "static": winner.static,
            "checked": {size.point: {n: list(v.shape) for n, v in size.feeds.items()} for size in shipped},
            "pinned": reference.golden.pinned or None,
        },
        "normalisation": {**normalisation,
                          "compiled_from": {c.id: "fixed" if c.fixed_shapes else "folded" if c.folded else "dynamic"
                                            for c in candidates
                                            if c.status not in ("unsupported", "unavailable")}},
        "compiler": {"name": winner.compiler, "version": winner.version, "options": winner.options,
                     "variant": winner.variant, "reproducible": winner.reproducible},
        "engines": {winner.engine: {"version": winner.version}},
        "artifacts": winner.artifacts,
        "candidates": [c.row(emulated) for c in candidates],
        "selection": {
            "policy": job.select,
            "selected": winner.id,
            "measured": selected.measured,
            "benchmark": selected.benchmark.to_json() if selected.benchmark else None,
            "tuning": selected.tuning,
            "emulated": emulated,
            "note": ("latencies were measured under emulation and do not represent native speed"
                     if emulated and selected.measured else None),
        },
        "tolerance": {**job.tolerance.to_json(),
                      **({"basis": reference.tolerance_basis} if reference.tolerance_basis else {})},
        "samples": {
            "origin": reference.golden.origin,
            "inputs": write_samples(root, "input", first.feeds, input_names),
            "reference": write_samples(root, "reference", first.reference, reference.output_names),
            "sizes": [{"point": size.point,
                       "inputs": write_samples(root, "input", size.feeds, input_names, size.point),
                       "reference": write_samples(root, "reference", size.reference, reference.output_names, size.point)}
                      for size in shipped[1:]],
            "reference_engine": (f"the selected variant {winner.id} on the build host (accepted by"
                                 f" {winner.task_gate['criterion']})" if own_reference else
                                 "onnxruntime (optimisations disabled, fp32) on the source model"
                                 + (" with the functions fused" if reference.resolved else "")),
            **({"empty_outputs": reference.empty_outputs} if reference.empty_outputs else {}),
        },
        "provenance": {**job.provenance, "packager_version": __version__, "build_platform": env.to_json()},
    }
    if any(c.variant for c in job.compilers) or job.gate:
        manifest["acceleration"] = {
            "variants": [c.variant for c in job.compilers if c.variant],
            "always_applied": ALWAYS_APPLIED,
            "gate": job.gate or {"tolerance": job.tolerance.to_json()},
            "gate_reads": reference.tensors.to_json(),
            "evaluation": reference.evaluation_record,
        }
    if job.target.os == "android":
        manifest["android"] = android_facts(winner.engine, winner.version)
    if job.target.os == "ios":
        manifest["ios"] = ios_facts(winner, candidates)
    if reference.resolved:
        manifest["functions"] = {
            **reference.resolved.to_json(),
            "applied_by": "runtime" if winner.functions == "runtime" else "graph",
            "preparation": reference.fusion_notes,
            "check": reference.function_check.to_json() if reference.function_check else None,
        }
        labels = next((s["labels"] for s in reference.resolved.runtime if s["op"] == "labels"), None)
        if labels:  # at most one top-k step, so at most one label list
            (root / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
            manifest["functions"]["labels_file"] = "labels.txt"
    return manifest
