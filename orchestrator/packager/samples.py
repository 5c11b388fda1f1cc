"""Sizes and sample inputs: the user's own samples, or seeded, plausible random ones.

A package keeps the model's dynamic dimensions; the spec's ``shapes`` only say which
sizes to build samples and benchmarks at. A dimension is a fixed size (``320``) or a
range (``{min: 32, max: 1280, bench: 320}``); the gate and the self-test then run at the
minimum, the benchmark size and the maximum.

Random inputs are seeded from the model's sha256 so that the same model always gets
the same golden samples, which keeps packages byte-reproducible. They are made to be
plausible for what each input is, as far as the graph tells: token ids stay inside the
embedding table they index, integers the graph one-hot encodes (a byte classifier's
input, compared with the constants 0..256) span the classes it encodes, a scalar
compared with a constant (a sample rate) takes that constant, recurrent state starts
at zeros. Samples that miss most of an input's values would gate a package on a
corner of what it must compute.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .signature import ANONYMOUS, ModelError, all_nodes


@dataclass(frozen=True)
class DimRange:
    """A dynamic dimension's accepted sizes, and the size benchmarks run at."""

    min: int
    max: int
    bench: int

    @classmethod
    def parse(cls, value: Mapping[str, Any], where: str) -> "DimRange":
        unknown = sorted(set(value) - {"min", "max", "bench"})
        if unknown:
            raise ModelError(f"{where}: unknown key {unknown[0]!r} in a range (keys: min, max, bench)")
        if "min" not in value or "max" not in value:
            raise ModelError(f"{where}: a range needs min and max, e.g. {{min: 32, max: 1280, bench: 320}}")
        low, high = value["min"], value["max"]
        bench = value.get("bench", low)
        for key, number in (("min", low), ("max", high), ("bench", bench)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ModelError(f"{where}.{key}: must be a whole number >= 1 (got {number!r})")
        if low > high:
            raise ModelError(f"{where}: min {low} is above max {high}")
        if not low <= bench <= high:
            raise ModelError(f"{where}.bench: {bench} is outside the range {low}..{high}")
        return cls(low, high, bench)

    def to_json(self) -> dict[str, int]:
        return {"min": self.min, "max": self.max, "bench": self.bench}


Dim = int | DimRange
#: the most elements one input may have at its largest checked size (1 GiB of float32):
#: golden samples are generated, run and shipped at that size
MAX_INPUT_ELEMENTS = 1 << 28


def _parse_dim(value: Any, where: str) -> Dim:
    if isinstance(value, DimRange):
        return value
    if isinstance(value, Mapping):
        return DimRange.parse(value, where)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{where}: must be a size (a whole number >= 1) or a range {{min, max, bench}}"
                         f" (got {value!r})")
    return value


def resolve_dims(inputs: list[dict[str, Any]], overrides: Mapping[str, list[Any]]) -> dict[str, list[Dim]]:
    """Every input's dimensions as sizes or ranges. The spec's ``shapes`` win; a named
    dynamic dimension takes the same size (or range) everywhere it appears; a still
    unknown leading (batch) dimension becomes 1; any other dynamic dimension must be
    given, because guessing an image size or a sequence length silently tests the
    wrong thing."""
    names = {i["name"] for i in inputs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ModelError(f"shapes names {unknown}, which are not model inputs (inputs: {sorted(names)})")
    symbols: dict[str, Dim] = {}
    given: dict[str, list[Dim]] = {}
    for spec in inputs:
        name, declared = spec["name"], spec["shape"]
        if name not in overrides:
            continue
        raw = list(overrides[name])
        if len(raw) != len(declared):
            raise ModelError(f"shapes.{name} has rank {len(raw)}, the model input has rank {len(declared)}")
        dims = [_parse_dim(v, f"shapes.{name}[{axis}]") for axis, v in enumerate(raw)]
        for axis, (want, got) in enumerate(zip(declared, dims)):
            if isinstance(want, int) and isinstance(got, DimRange):
                raise ModelError(f"shapes.{name}[{axis}] is a range, but the model fixes that dimension to {want}")
            if isinstance(want, int) and want != got:
                raise ModelError(f"shapes.{name}[{axis}] is {got}, the model fixes it to {want}")
            if isinstance(want, str) and want != ANONYMOUS:
                if symbols.setdefault(want, got) != got:
                    raise ModelError(f"shapes.{name}[{axis}] is {_show(got)}, but dimension {want!r} is"
                                     f" {_show(symbols[want])} elsewhere")
        given[name] = dims
    resolved = {}
    for spec in inputs:
        name, declared = spec["name"], spec["shape"]
        if name in given:
            resolved[name] = given[name]
            continue
        dims: list[Dim] = []
        for axis, dim in enumerate(declared):
            if isinstance(dim, int):
                dims.append(dim)
            elif dim in symbols:
                dims.append(symbols[dim])
            elif axis == 0:
                dims.append(1)
                if dim != ANONYMOUS:
                    symbols[dim] = 1
            else:
                raise ModelError(
                    f"input {name!r} dimension {axis} ({dim!r}) is dynamic; give its size in the spec,"
                    f" e.g. shapes: {{{name}: {[d if isinstance(d, int) else 1 for d in declared]}}}"
                    f" (or a range: {{min: .., max: .., bench: ..}})"
                )
        resolved[name] = dims
    for name, dims in resolved.items():
        largest = math.prod(d.max if isinstance(d, DimRange) else d for d in dims)
        if largest > MAX_INPUT_ELEMENTS:
            raise ModelError(f"shapes.{name}: {[_show(d) for d in dims]} is {largest} elements at its largest;"
                             f" an input may have at most {MAX_INPUT_ELEMENTS} (samples are made and run at"
                             " every checked size)")
    return resolved


def _show(dim: Dim) -> str:
    return f"{dim.min}..{dim.max}" if isinstance(dim, DimRange) else str(dim)


def shapes_at(dims: Mapping[str, list[Dim]], point: str) -> dict[str, list[int]]:
    """Every input's shape with its ranges at ``point``: "min", "bench" or "max"."""
    return {name: [getattr(d, point) if isinstance(d, DimRange) else d for d in ds] for name, ds in dims.items()}


def size_points(dims: Mapping[str, list[Dim]]) -> list[str]:
    """The sizes a package is checked at: the benchmark size first, then the minimum and
    maximum of the ranges, where they differ from it."""
    points = ["bench"]
    seen = [shapes_at(dims, "bench")]
    for point in ("min", "max"):
        shapes = shapes_at(dims, point)
        if shapes not in seen:
            points.append(point)
            seen.append(shapes)
    return points


def signature_ranges(inputs: list[dict[str, Any]], dims: Mapping[str, list[Dim]]) -> dict[str, list[Any]]:
    """What each dimension of each input accepts, for the manifest: None where the model
    fixes the size, ``[min, max]`` for a range from the spec, ``[1, None]`` (any size)
    for a dynamic dimension the spec gave one size for."""
    ranges = {}
    for spec in inputs:
        row: list[Any] = []
        for declared, dim in zip(spec["shape"], dims[spec["name"]]):
            if isinstance(declared, int):
                row.append(None)
            elif isinstance(dim, DimRange):
                row.append([dim.min, dim.max])
            else:
                row.append([1, None])
        if any(r is not None for r in row):
            ranges[spec["name"]] = row
    return ranges


@dataclass(frozen=True)
class InputHint:
    """What the graph says about one input's plausible values."""

    #: the integer values it takes, as a half-open range, and why: ids that index a
    #: table, or classes that the graph one-hot encodes
    values: tuple[int, int] | None = None
    values_why: str = ""
    #: the input is compared with these constants (a sample rate checked against 16000)
    constants: tuple[float, ...] = ()
    #: recurrent state or a cache: starts at zeros
    state: bool = False


#: ops whose output holds the same values as their first input (rearranged or repeated)
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Tile"}
_COMPARISONS = {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"}
_STATE_WORDS = ("state", "hidden", "cache", "past", "memory")


def input_hints(model: Any) -> dict[str, InputHint]:
    """Read from the graph what each input's values plausibly are."""
    from onnx import numpy_helper

    nodes = all_nodes(model.graph)
    constants: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in nodes:
        if node.op_type == "Constant" and node.output:
            for attribute in node.attribute:
                if attribute.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attribute.t)
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    output_names = [o.name for o in model.graph.output]
    hints = {}
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        names, ranges, compared = {value.name}, [], []
        frontier = [value.name]
        for _ in range(4):  # follow value-preserving ops a few steps
            following = []
            for name in frontier:
                for node in consumers.get(name, []):
                    if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name \
                            and node.input[0] in constants:
                        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                        rows = constants[node.input[0]].shape[axis]
                        ranges.append((0, rows, f"the table it indexes has {rows} rows"))
                    elif node.op_type == "OneHot" and node.input[0] == name and node.input[1] in constants:
                        depth = int(constants[node.input[1]].ravel()[0])
                        ranges.append((0, depth, f"the OneHot it feeds has depth {depth}"))
                    elif node.op_type in _COMPARISONS:
                        others = [constants[other] for other in node.input
                                  if other != name and other in constants and constants[other].size]
                        compared += [float(other.ravel()[0]) for other in others]
                        if node.op_type == "Equal":
                            ranges += [found for found in map(_one_hot_classes, others) if found]
                    elif node.op_type in _PASS_THROUGH and node.input[0] == name:
                        following += [o for o in node.output if o not in names]
                        names.update(node.output)
            frontier = following
        lowered = value.name.lower()
        state = any(word in lowered for word in _STATE_WORDS) or any(
            out != value.name and out.startswith(value.name) and len(out) - len(value.name) <= 2
            for out in output_names)
        # several sources bound the values: the narrowest is the one every use accepts
        low, high, why = min(ranges, key=lambda r: r[1] - r[0]) if ranges else (0, 0, "")
        hints[value.name] = InputHint((low, high) if ranges else None, why, tuple(dict.fromkeys(compared)), state)
    return hints


def _one_hot_classes(table: np.ndarray) -> tuple[int, int, str] | None:
    """The classes a one-hot encoding by comparison covers (``Equal(x, [0, 1, .., 256])``,
    as TensorFlow and JAX export ``one_hot``): a table of distinct consecutive integers."""
    if table.dtype.kind not in "iu" or table.size < 2:
        return None
    values = np.unique(table)
    low, high = int(values[0]), int(values[-1]) + 1
    if values.size != table.size or high - low != values.size:
        return None
    return low, high, f"the graph one-hot encodes it over the {values.size} classes {low}..{high - 1}"


def random_inputs(
    inputs: list[dict[str, Any]], shapes: Mapping[str, list[int]], seed: int,
    hints: Mapping[str, InputHint] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Seeded inputs, and for each a line saying how it was made (for the manifest)."""
    rng = np.random.default_rng(seed)
    feeds, how = {}, {}
    for spec in inputs:
        name = spec["name"]
        dtype, shape = np.dtype(spec["dtype"]), shapes[name]
        hint = (hints or {}).get(name, InputHint())
        if dtype.kind not in "fiub":
            raise ModelError(f"input {name!r} has dtype {dtype}; give samples for it in the spec")
        if hint.state and dtype.kind == "f":
            value, how[name] = np.zeros(shape, dtype), "zeros (recurrent state or cache)"
        elif hint.constants and not shape:
            value = np.array(hint.constants[0]).astype(dtype)
            how[name] = f"{value.item()!r}, the constant the graph compares it with"
        elif dtype.kind in "iu" and hint.values:
            low, high = hint.values
            value = rng.integers(low, high, shape).astype(dtype)
            how[name] = f"integers uniform in [{low}, {high}) ({hint.values_why})"
        elif not shape and dtype.kind in "iuf":
            value = np.array(rng.integers(1, 11) if dtype.kind in "iu" else rng.uniform(0.5, 2.0)).astype(dtype)
            how[name] = "a positive scalar"
        elif dtype.kind == "f":
            value, how[name] = rng.standard_normal(shape).astype(dtype), "standard normal"
        elif dtype == np.uint8:
            value, how[name] = rng.integers(0, 256, shape, dtype=np.uint8), "uniform bytes"
        elif dtype.kind in "iu":
            value, how[name] = rng.integers(0, 10, shape).astype(dtype), "integers uniform in [0, 10)"
        else:
            value, how[name] = rng.integers(0, 2, shape).astype(bool), "random booleans"
        feeds[name] = value
    return feeds, how


def point_seed(model_sha256: str, point: str) -> int:
    """The seed of the random samples at one size point: the model's, then per point."""
    if point == "bench":
        return int(model_sha256[:8], 16)
    return int(hashlib.sha256(f"{model_sha256}:{point}".encode()).hexdigest()[:8], 16)


def load_samples(path: Path, inputs: list[dict[str, Any]],
                 dims: Mapping[str, list[Dim]] | None = None) -> dict[str, np.ndarray]:
    """Read user samples: an ``.npz`` keyed by input name, or an ``.npy`` for a
    single-input model. Names and dtypes must match the model exactly, and sizes must
    fit the model (and the spec's ranges, where given)."""
    path = Path(path)
    names = [i["name"] for i in inputs]
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                feeds = {k: archive[k] for k in archive.files}
        elif path.suffix == ".npy":
            if len(names) != 1:
                raise ModelError(f"an .npy sample fits a single-input model; this one has inputs {names}: use .npz")
            feeds = {names[0]: np.load(path, allow_pickle=False)}
        else:
            raise ModelError("samples must be an .npy or .npz file")
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"cannot read samples: {exc}") from None
    if sorted(feeds) != sorted(names):
        raise ModelError(f"samples hold arrays {sorted(feeds)}, the model's inputs are {sorted(names)}")
    for spec in inputs:
        value = feeds[spec["name"]]
        if value.dtype != np.dtype(spec["dtype"]):
            raise ModelError(f"sample {spec['name']!r} has dtype {value.dtype}, the model needs {spec['dtype']}")
        declared = spec["shape"]
        if value.ndim != len(declared) or any(
            isinstance(d, int) and d != n for d, n in zip(declared, value.shape)
        ):
            raise ModelError(f"sample {spec['name']!r} has shape {list(value.shape)}, the model needs {declared}")
        for axis, dim in enumerate((dims or {}).get(spec["name"], [])):
            if isinstance(dim, DimRange) and not dim.min <= value.shape[axis] <= dim.max:
                raise ModelError(f"sample {spec['name']!r} has size {value.shape[axis]} in dimension {axis},"
                                 f" outside the range {dim.min}..{dim.max} the spec gives")
    return feeds
