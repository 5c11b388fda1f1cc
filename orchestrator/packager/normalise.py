"""Pre-conversion normalisation: fix the input shapes, then simplify with onnxslim.

Converters for static-shape engines (MNN, ncnn) need fixed shapes, and most converter
failures on real exports disappear once constant subgraphs are folded and redundant
nodes removed. Every candidate compiles from this one normalised model, so they are
compared on equal terms; the manifest records whether normalisation changed anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..runtime.engines import installed_version


def _fix_shapes(model: Any, shapes: Mapping[str, list[int]]) -> None:
    for value in model.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shapes[value.name]):
            dim.Clear()
            dim.dim_value = int(size)


def normalise(source: Path, shapes: Mapping[str, list[int]], dest: Path) -> dict[str, Any]:
    """Write the fixed-shape, simplified model to ``dest``; return what was done."""
    import onnx

    model = onnx.load(str(source))
    nodes_before = len(model.graph.node)
    _fix_shapes(model, shapes)
    record: dict[str, Any] = {"fixed_shapes": {k: list(v) for k, v in shapes.items()}, "nodes_before": nodes_before}
    version = installed_version("onnxslim")
    if version is None:
        record.update(tool=None, changed=False, nodes_after=nodes_before, note="onnxslim is not installed")
        onnx.save(model, str(dest))
        return record
    import onnxslim

    try:
        slimmed = onnxslim.slim(model)
        onnx.checker.check_model(slimmed)
    except Exception as exc:  # onnxslim failing is not fatal: convert the shape-fixed model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        record.update(tool=f"onnxslim {version}", changed=False, nodes_after=nodes_before,
                      note=f"onnxslim failed, using the unsimplified model: {first}")
        onnx.save(model, str(dest))
        return record
    onnx.save(slimmed, str(dest))
    record.update(tool=f"onnxslim {version}", nodes_after=len(slimmed.graph.node),
                  changed=slimmed.graph.SerializeToString() != model.graph.SerializeToString())
    return record
