"""Sample inputs for the self-test: the user's own, or seeded random ones.

Random inputs are seeded from the model's sha256 so that the same model always gets
the same golden samples, which keeps packages byte-reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .signature import ANONYMOUS, ModelError


def concrete_shapes(
    inputs: list[dict[str, Any]], overrides: Mapping[str, list[int]]
) -> dict[str, list[int]]:
    """Fix every input's shape. The spec's ``shapes`` win; a named dynamic dimension
    takes the same size everywhere it appears (two inputs sharing "batch" must agree);
    a still-unknown leading (batch) dimension becomes 1; any other dynamic dimension
    must be given, because guessing an image size or a sequence length silently tests
    the wrong thing."""
    names = {i["name"] for i in inputs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ModelError(f"shapes names {unknown}, which are not model inputs (inputs: {sorted(names)})")
    symbols: dict[str, int] = {}
    for spec in inputs:
        name, declared = spec["name"], spec["shape"]
        if name not in overrides:
            continue
        given = list(overrides[name])
        if len(given) != len(declared):
            raise ModelError(f"shapes.{name} has rank {len(given)}, the model input has rank {len(declared)}")
        for axis, (want, got) in enumerate(zip(declared, given)):
            if isinstance(want, int) and want != got:
                raise ModelError(f"shapes.{name}[{axis}] is {got}, the model fixes it to {want}")
            if isinstance(want, str) and want != ANONYMOUS:
                if symbols.setdefault(want, got) != got:
                    raise ModelError(f"shapes.{name}[{axis}] is {got}, but dimension {want!r} is {symbols[want]} elsewhere")
    shapes = {}
    for spec in inputs:
        name, declared = spec["name"], spec["shape"]
        if name in overrides:
            shapes[name] = list(overrides[name])
            continue
        fixed = []
        for axis, dim in enumerate(declared):
            if isinstance(dim, int):
                fixed.append(dim)
            elif dim in symbols:
                fixed.append(symbols[dim])
            elif axis == 0:
                fixed.append(1)
                if dim != ANONYMOUS:
                    symbols[dim] = 1
            else:
                raise ModelError(
                    f"input {name!r} dimension {axis} ({dim!r}) is dynamic; give its size in the spec,"
                    f" e.g. shapes: {{{name}: {[d if isinstance(d, int) else 1 for d in declared]}}}"
                )
        shapes[name] = fixed
    return shapes


def random_inputs(
    inputs: list[dict[str, Any]], shapes: Mapping[str, list[int]], seed: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        dtype, shape = np.dtype(spec["dtype"]), shapes[spec["name"]]
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.uint8:
            value = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dtype.kind in "iu":
            value = rng.integers(0, 10, shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.integers(0, 2, shape).astype(bool)
        else:
            raise ModelError(f"input {spec['name']!r} has dtype {dtype}; give samples for it in the spec")
        feeds[spec["name"]] = value
    return feeds


def load_samples(path: Path, inputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Read user samples: an ``.npz`` keyed by input name, or an ``.npy`` for a
    single-input model. Names and dtypes must match the model exactly."""
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
    return feeds
