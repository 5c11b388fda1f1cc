"""Golden samples at every size a package is checked at, with the reference outputs.

The benchmark size comes first (the user's samples, or seeded random inputs at the
spec's sizes), then the minimum and maximum of every range. A dynamic dimension the
spec gave a single size for is also *probed* at twice that size, so that an engine
which silently works at one size only (a converter that baked a reshape) is caught
instead of shipped as dynamic. If the source model itself does not run at the probe
size, those dimensions are not really free: they are pinned at the given size, and
the manifest says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .causes import exception_cause
from .normalise import SizeSet
from .samples import (
    Dim,
    DimRange,
    InputHint,
    load_samples,
    point_seed,
    random_inputs,
    resolve_dims,
    shapes_at,
    size_points,
)
from .signature import ANONYMOUS, ModelError


@dataclass
class Golden:
    #: every input's dimensions: sizes (at the benchmark point) or ranges
    dims: dict[str, list[Dim]]
    #: one set per checked size, the benchmark size first
    sets: list[SizeSet]
    #: how the inputs of each size were made, for the manifest
    origin: dict[str, Any]
    #: "input[axis]" -> why a dynamic dimension is pinned at one size: the source runs at
    #: no other, or the spec's range has one size
    pinned: dict[str, str] = field(default_factory=dict)

    def shapes(self, index: int) -> dict[str, list[int]]:
        return {name: list(value.shape) for name, value in self.sets[index].feeds.items()}


def _dims_from_samples(inputs: list[dict[str, Any]], overrides: Mapping[str, list[Any]],
                       feeds: Mapping[str, np.ndarray]) -> dict[str, list[Dim]]:
    """The dimensions when the user gave samples: their sizes, with the spec's ranges."""
    ranges = resolve_dims(inputs, overrides) if overrides else {}
    merged = {}
    for spec in inputs:
        sizes: list[Any] = list(feeds[spec["name"]].shape)
        for axis, dim in enumerate(ranges.get(spec["name"], [])):
            if isinstance(dim, DimRange):
                sizes[axis] = DimRange(dim.min, dim.max, int(sizes[axis]))
        merged[spec["name"]] = sizes
    return resolve_dims(inputs, merged)


def _free_dims(inputs: list[dict[str, Any]], dims: dict[str, list[Dim]]) -> list[list[tuple[str, int]]]:
    """Dynamic dimensions the spec gave one size for, grouped by the model's name for
    them (a named dimension is one size everywhere); an unnamed one is its own group."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for spec in inputs:
        for axis, (declared, dim) in enumerate(zip(spec["shape"], dims[spec["name"]])):
            if isinstance(declared, str) and not isinstance(dim, DimRange):
                key = f"{spec['name']}[{axis}]" if declared == ANONYMOUS else declared
                groups.setdefault(key, []).append((spec["name"], axis))
    return list(groups.values())


def one_size_ranges(dims: dict[str, list[Dim]]) -> dict[str, str]:
    """Ranges of one size (``{min: 1, max: 1}``: a streaming model's batch): the package
    accepts that size only, so they are pinned like a size the source runs at alone."""
    return {f"{name}[{axis}]": f"the spec's range allows this size only ({dim.min}..{dim.max})"
            for name, row in dims.items() for axis, dim in enumerate(row)
            if isinstance(dim, DimRange) and dim.min == dim.max}


def _doubled(bench: dict[str, list[int]], groups: list[list[tuple[str, int]]]) -> dict[str, list[int]]:
    shapes = {name: list(shape) for name, shape in bench.items()}
    for group in groups:
        for name, axis in group:
            shapes[name][axis] = max(2 * shapes[name][axis], 2)
    return shapes


def _probe(inputs: list[dict[str, Any]], dims: dict[str, list[Dim]], bench: SizeSet, model_sha256: str,
           hints: Mapping[str, InputHint], run: Any) -> tuple[SizeSet | None, dict[str, Any], dict[str, str]] | None:
    """The probe size: every free dimension at twice its given size, where the source
    model runs so; each dimension it does not run at is pinned, with the reason."""
    groups = _free_dims(inputs, dims)
    if not groups:
        return None
    shapes = {name: list(value.shape) for name, value in bench.feeds.items()}
    seed = point_seed(model_sha256, "probe")

    def attempt(chosen: list[list[tuple[str, int]]]) -> tuple[SizeSet, dict[str, str]] | str:
        feeds, how = random_inputs(inputs, _doubled(shapes, chosen), seed, hints)
        try:
            return SizeSet("probe", feeds, run("probe", feeds)), how
        except ModelError as exc:
            return str(exc)

    whole = attempt(groups)
    free, pinned = groups, {}
    if isinstance(whole, str):  # find which dimensions are not free
        free, failed = [], {}
        for group in groups:
            alone = attempt([group])
            if isinstance(alone, str):
                name, axis = group[0]
                failed.setdefault(shapes[name][axis], []).append((group, alone))
            else:
                free.append(group)
        for tied in failed.values():
            # unnamed dimensions the model ties together (a batch shared by an input and
            # its state) only run doubled together: try those of one size as one group
            merged = [dim for group, _ in tied for dim in group]
            if len(tied) > 1 and not isinstance(attempt([*free, merged]), str):
                free.append(merged)
                continue
            for group, reason in tied:
                pinned.update({f"{n}[{a}]": reason.replace("the probe size", "twice the given size") for n, a in group})
        whole = attempt(free) if free else "no dimension runs at twice its size"
        if isinstance(whole, str) and len(free) > 1:  # free alone, not together: keep the first
            pinned.update({f"{n}[{a}]": f"runs at twice its size only alone: {whole}" for g in free[1:] for n, a in g})
            free = free[:1]
            whole = attempt(free)
    if isinstance(whole, str):
        return None, {}, pinned
    size, how = whole
    doubled = [f"{n}[{a}]" for g in free for n, a in g]
    return size, {"kind": "random", "seed": seed, "generated": how, "doubled": doubled}, pinned


def make_golden(inputs: list[dict[str, Any]], overrides: Mapping[str, list[Any]], samples: Path | None,
                sample_name: str | None, model_sha256: str, hints: Mapping[str, InputHint],
                reference: Any) -> Golden:
    """Samples at every checked size and ``reference``'s outputs on them. Raises
    :class:`ModelError` when the source model cannot run at a size the spec asks for."""

    def run(point: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return reference.run(feeds)
        except Exception as exc:
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            raise ModelError(f"the source model does not run under onnxruntime at the {point} size {shapes}:"
                             f" {exception_cause(exc)}") from None

    if samples is not None:
        feeds = load_samples(samples, inputs)
        dims = _dims_from_samples(inputs, overrides, feeds)
        load_samples(samples, inputs, dims)  # within the spec's ranges
        origin: dict[str, Any] = {"kind": "spec", "file": sample_name}
    else:
        dims = resolve_dims(inputs, overrides)
        seed = point_seed(model_sha256, "bench")
        feeds, how = random_inputs(inputs, shapes_at(dims, "bench"), seed, hints)
        origin = {"kind": "random", "seed": seed, "generated": how}
    sets = [SizeSet("bench", feeds, run("bench", feeds))]
    sizes: dict[str, Any] = {}
    for point in size_points(dims)[1:]:
        seed = point_seed(model_sha256, point)
        point_feeds, how = random_inputs(inputs, shapes_at(dims, point), seed, hints)
        sets.append(SizeSet(point, point_feeds, run(point, point_feeds)))
        sizes[point] = {"kind": "random", "seed": seed, "generated": how}
    golden = Golden(dims, sets, origin)
    probe = _probe(inputs, dims, sets[0], model_sha256, hints, run)
    if probe is not None:
        size, how, golden.pinned = probe
        if size is not None:
            sets.append(size)
            sizes["probe"] = how
    golden.pinned.update(one_size_ranges(dims))
    if sizes:
        origin["other_sizes"] = sizes
    return golden
