"""Pre-conversion normalisation, verified at every step and never trusted.

Three models come out of it:

- the **dynamic** one keeps the model's dynamic dimensions; engines that run any size
  (OpenVINO, MNN, ncnn) compile from it, so the package does too. The sizes the package
  fixes are written in where that stays faithful, since some engines cannot take what
  only those sizes decide (OpenVINO's CPU plug-in and an If on an unknown length);
- the **folded** one is the dynamic model folded furthest: the first faithful optimised
  model with any sizes written in, or none, before any model only simplified. An engine
  that runs a graph as it is given (onnxruntime) evaluates every If left on every call,
  so it starts from this one. Where writing the sizes in makes the optimised model
  unfaithful (Silero VAD), the dynamic model is only simplified (13 Ifs) while the
  folded one is optimised without them (3 Ifs), as Olive's fp32 output is;
- the **fixed** one has every input at its benchmark size, for compilers that need
  fixed shapes.

Each is optimised with onnxscript's optimizer, then simplified with onnxslim, where
that helps converters and engines: constant folding, redundant nodes removed, and
(onnxscript) an If whose condition the graph fixes, such as a rank check, replaced by
its branch. Silero VAD guards its input with a dozen such Ifs; onnxslim alone folds
few of them and onnxruntime evaluates the rest on every call (Olive's fp32 output,
which is this optimizer, ran 10-15 % faster than the slimmed model on the same
onnxruntime). Every step's result must load in onnxruntime and match the reference
outputs on the samples within the spec's tolerance, at every size it will be used at;
otherwise it falls back: optimised + simplified → simplified → shapes fixed only →
the source model as it is. A failure of our own transformation is never the reason a
job fails: the record says which model each kind of candidate compiled from and why
the others were dropped. Shape fixing writes only the top-level input dimensions; subgraph bodies
(If/Loop/Scan) are left as they are, so no rank inside them changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..runtime.checks import Tolerance, compare_outputs
from ..runtime.engines import OnnxRuntimeRunner, installed_version
from .causes import exception_cause
from .signature import all_nodes


@dataclass
class SizeSet:
    """Inputs at one size point ("bench", "min", "max") and the reference outputs."""

    point: str
    feeds: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]


@dataclass
class Normalised:
    dynamic: Path
    fixed: Path
    folded: Path
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One candidate model for a start point: how it is named in the record, how far it
    folds (2 optimised and simplified, 1 simplified, 0 as it is), and how it is made."""

    name: str
    folds: int
    make: Callable[[], Any]


def _copy(model: Any) -> Any:
    import onnx

    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def fix_shapes(model: Any, shapes: Mapping[str, list[int | None]]) -> Any:
    """A copy of ``model`` with its top-level inputs at ``shapes`` (None: that dimension
    left as it is); nothing else changes."""
    fixed = _copy(model)
    for value in fixed.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shapes[value.name]):
            if size is None:
                continue
            dim.Clear()
            dim.dim_value = int(size)
    return fixed


def detach_initializers(model: Any) -> Any | None:
    """A copy of ``model`` whose initializers are no longer also listed as graph inputs
    (IR version 3 required that; from IR 4 an initializer is a constant, which is what
    optimisers and converters expect), or None when none are listed."""
    initializers = {i.name for i in model.graph.initializer}
    if not any(value.name in initializers for value in model.graph.input):
        return None
    detached = _copy(model)
    kept = [value for value in detached.graph.input if value.name not in initializers]
    del detached.graph.input[:]
    detached.graph.input.extend(kept)
    detached.ir_version = max(detached.ir_version, 4)
    return detached


def as_float32(model: Any) -> Any | None:
    """A copy of ``model`` that holds and computes in float32 where it used float16,
    bfloat16 or float64 (weights, constants, casts, inputs and outputs, in every
    subgraph), or None when it uses none of them. For converters that pass
    half-precision operators through unconverted (pnnx: "layer Conv is not an ncnn
    layer") or refuse doubles (pnnx: "expect [?,4]f64 but got [1,4]f32"; ncnn has no
    other float); an engine that wants half precision is then asked for it by its own
    option, and a double model's package is held to the gate like any other. The
    package keeps the model's signature: the runtime feeds float32 and returns the
    signature's dtype."""
    import onnx
    from onnx import AttributeProto, TensorProto, numpy_helper

    from .signature import all_graphs

    other = {TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    narrowed = _copy(model)
    changed = False

    def to_float32(tensor: Any) -> None:
        nonlocal changed
        if tensor.data_type in other:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
            changed = True

    for graph in all_graphs(narrowed.graph):
        for tensor in graph.initializer:
            to_float32(tensor)
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.tensor_type.elem_type in other:
                value.type.tensor_type.elem_type = TensorProto.FLOAT
                changed = True
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == AttributeProto.TENSOR:
                    to_float32(attribute.t)
                elif attribute.name in ("to", "dtype") and attribute.type == AttributeProto.INT and attribute.i in other:
                    attribute.i = TensorProto.FLOAT  # Cast, RandomNormal, EyeLike, ...
                    changed = True
    if not changed:
        return None
    onnx.checker.check_model(narrowed)
    return narrowed


def _slim(model: Any) -> Any:
    import onnx
    import onnxslim

    slimmed = onnxslim.slim(_copy(model))  # onnxslim edits what it is given: never the original
    onnx.checker.check_model(slimmed)
    return slimmed


def _optimise(model: Any) -> Any:
    """onnxscript's optimizer (constant folding across If branches, dead code removed),
    then onnxslim: each finds what the other leaves (onnxslim first hides from
    onnxscript the shapes it folds Silero's rank checks with)."""
    import onnxscript

    return _slim(onnxscript.optimizer.optimize(_copy(model)))


def _problem(path: Path, sets: list[SizeSet], tolerance: Tolerance, optimised: bool) -> str | None:
    """Why the model at ``path`` is not a faithful copy of the reference, or None; with
    ``optimised``, also why onnxruntime cannot load it as its compiler does (its
    optimiser infers the types of every branch, even one never taken)."""
    try:
        runner = OnnxRuntimeRunner(path, {"optimization": "disabled"})
    except Exception as exc:  # onnxruntime refusing to load it is the finding
        return f"onnxruntime cannot load it: {exception_cause(exc)}"
    if optimised:
        try:
            OnnxRuntimeRunner(path, {"optimization": "all"})
        except Exception as exc:
            return f"onnxruntime cannot load it optimised: {exception_cause(exc)}"
    for size in sets:
        try:
            outputs = runner.run(size.feeds)
        except Exception as exc:
            return f"onnxruntime fails at the {size.point} size: {exception_cause(exc)}"
        comparison = compare_outputs(outputs, size.reference, tolerance)
        if not comparison.passed:
            return f"differs from the source model at the {size.point} size: {comparison.summary()}"
    return None


def _first_faithful(steps: list[Step], source: Path, dest: Path, sets: list[SizeSet], tolerance: Tolerance,
                    verified: dict[str, str | Path] | None = None) -> dict[str, Any]:
    """Try each step in order; keep the first whose result is faithful, else the source
    model. Returns what was used and why the others were dropped. With ``verified``
    (step -> why it is not faithful, or where its faithful model was written; shared
    between start points), the model must also load optimised in onnxruntime, and no
    step is made or verified twice."""
    import shutil

    import onnx

    dropped = []
    for step in steps:
        known = verified.get(step.name) if verified is not None else None
        if isinstance(known, Path):  # faithful, and written for another start point
            shutil.copyfile(known, dest)
            model, problem = onnx.load(str(dest), load_external_data=False), None
        elif known is not None:
            problem = known
        else:
            try:
                model = step.make()
                onnx.save(model, str(dest))
            except Exception as exc:  # the transformation itself failing
                problem = f"failed: {exception_cause(exc)}"
            else:
                problem = _problem(dest, sets, tolerance, optimised=verified is not None)
            if verified is not None:
                verified[step.name] = dest if problem is None else problem
        if problem is None:
            return {"model": step.name, "nodes": len(model.graph.node), "nodes_in_all": len(all_nodes(model.graph)),
                    "dropped": dropped}
        dropped.append({"step": step.name, "reason": problem})
    dest.write_bytes(source.read_bytes())
    return {"model": "source", "dropped": dropped}


#: how the dynamic model's record names the sizes written into it: every size the
#: package fixes, or (where the model cannot take those) those the source runs at alone
PINNED = "sizes the package fixes written in + "
FORCED = "sizes the source runs at alone written in + "


def pinned_shapes(pinned: Mapping[str, str], bench: Mapping[str, np.ndarray]) -> dict[str, list[int | None]]:
    """The sizes of the dimensions the package fixes although the model leaves them
    dynamic (``golden.pinned``: "input[axis]" -> why), per input, None elsewhere."""
    shapes: dict[str, list[int | None]] = {}
    for key in pinned:
        name, _, axis = key[:-1].rpartition("[")
        if name in bench:
            row = shapes.setdefault(name, [None] * bench[name].ndim)
            row[int(axis)] = int(bench[name].shape[int(axis)])
    return shapes


def normalise(source: Path, sets: list[SizeSet], tolerance: Tolerance, work: Path,
              pinned: Mapping[str, list[int | None]] | None = None,
              forced: Mapping[str, list[int | None]] | None = None) -> Normalised:
    """Write the verified dynamic and fixed-shape models into ``work``; return them and
    the record of what was done. ``sets[0]`` is the benchmark size. ``pinned`` are the
    sizes of dimensions the package fixes though the model leaves them dynamic (the
    source model does not run at another size): the dynamic model has them written in,
    so that what only those sizes decide folds away as it does at fixed shapes (Silero
    VAD's If on the length of its frame, which OpenVINO's CPU plug-in cannot take while
    the length is unknown), while the dimensions the package keeps free stay free.
    Where no model with every size in ``pinned`` is faithful, the sizes in ``forced``
    (those the source runs at alone; the others come from the spec's ranges of one
    size) are written in instead: Silero VAD's 8 kHz branch, never taken at 16 kHz's
    frame length, turns ill-typed once its batch is written in as well."""
    import onnx

    work.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(source))
    slim_version = installed_version("onnxslim")
    script_version = installed_version("onnxscript") if slim_version else None
    detached = detach_initializers(model)
    base, prefix = (detached, "initializers detached + ") if detached is not None else (model, "")
    fixed_model = None

    def fixed() -> Any:
        nonlocal fixed_model
        if fixed_model is None:
            fixed_model = fix_shapes(base, {k: list(v.shape) for k, v in sets[0].feeds.items()})
        return fixed_model

    def dynamic_steps_from(start: Any, written: str) -> list[Step]:
        steps: list[Step] = []
        if script_version:
            steps.append(Step(f"{prefix}{written}onnxscript optimizer + onnxslim", 2, lambda: _optimise(start)))
        if slim_version:
            steps.append(Step(f"{prefix}{written}onnxslim", 1, lambda: _slim(start)))
        if detached is not None or written:
            steps.append(Step((prefix + written).removesuffix(" + "), 0, lambda: start))
        return steps

    # the sizes written in can make a branch the model never takes at them ill-typed
    # (Silero's 8 kHz path at 16 kHz's frame length), which onnxruntime refuses to load:
    # then fewer sizes are written in, and at last none
    pinned_steps: list[Step] = []
    written: dict[str, Mapping[str, list[int | None]]] = {}  # step -> the sizes it has written in
    for label, sizes in [(PINNED, pinned)] + ([(FORCED, forced)] if forced != pinned else []):
        if sizes:
            steps = dynamic_steps_from(fix_shapes(base, sizes), label)
            pinned_steps += steps
            written.update((step.name, sizes) for step in steps)
    dynamic_steps = pinned_steps + dynamic_steps_from(base, "")
    fixed_steps: list[Step] = []
    if script_version:
        fixed_steps.append(Step(f"{prefix}shapes fixed + onnxscript optimizer + onnxslim", 2,
                                lambda: _optimise(fixed())))
    if slim_version:
        fixed_steps.append(Step(f"{prefix}shapes fixed + onnxslim", 1, lambda: _slim(fixed())))
    fixed_steps.append(Step(f"{prefix}shapes fixed", 0, fixed))
    result = Normalised(work / "normalised-dynamic.onnx", work / "normalised-fixed.onnx",
                        work / "normalised-folded.onnx")
    verified: dict[str, str | Path] = {}  # step -> why it is not faithful, or where it was written
    result.record = {
        "tool": ", ".join(f"{name} {version}" for name, version in
                          (("onnxscript", script_version), ("onnxslim", slim_version)) if version) or None,
        "nodes_before": len(model.graph.node),
        "verified_at": [s.point for s in sets],
        "dynamic": _first_faithful(dynamic_steps, source, result.dynamic, sets, tolerance, verified),
        # the folded model: the same steps, those that fold further first (a stable sort)
        "folded": _first_faithful(sorted(dynamic_steps, key=lambda step: -step.folds), source, result.folded,
                                  sets, tolerance, verified),
        "fixed": {"shapes": {k: list(v.shape) for k, v in sets[0].feeds.items()},
                  **_first_faithful(fixed_steps, source, result.fixed, sets[:1], tolerance)},
    }
    for kind in ("dynamic", "folded"):
        chosen = written.get(result.record[kind]["model"])
        if chosen:
            result.record[kind]["pinned"] = {f"{name}[{axis}]": size for name, row in chosen.items()
                                             for axis, size in enumerate(row) if size is not None}
    if not slim_version:
        result.record["note"] = "onnxslim is not installed"
    elif not script_version:
        result.record["note"] = "onnxscript is not installed: simplified by onnxslim only"
    return result
