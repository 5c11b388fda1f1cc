"""Outputs whose size the data decides, and what the gates read when samples leave them empty.

A detector that ends in NonMaxSuppression (or a model that ends in NonZero, Compress or
Unique) returns as many rows as its input deserves. Random golden samples rarely
deserve any: the reference output is empty at every checked size, the accuracy gate
compares two empty arrays, and every engine "passes" it, however wrong its boxes and
scores. Here the gate also reads the dense tensors such an op decides from (NMS's boxes
and scores; NonZero's mask back to the float scores it compares), taken out of the
graph as taps: every candidate is then judged on what decides those outputs, within
the same tolerance. An empty output with no such op behind it is recorded as
unchecked, so the manifest never claims a check that compared nothing.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import onnx

from ..runtime.functions import tap_name

#: ops whose output size depends on the values of their inputs
DATA_DEPENDENT = ("NonMaxSuppression", "NonZero", "Compress", "Unique")

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


@dataclass
class EmptyOutputs:
    """The outputs the golden samples left empty, and what the gates read for them."""

    #: output -> how it is gated now (for the manifest)
    record: dict[str, str] = field(default_factory=dict)
    #: graph tensor -> its tap's name: dense tensors every candidate is gated on
    taps: dict[str, str] = field(default_factory=dict)
    #: graph tensor -> its element type (the tap's output type)
    types: dict[str, int] = field(default_factory=dict)


def empty_everywhere(references: Iterable[Mapping[str, np.ndarray]], names: list[str]) -> list[str]:
    """The outputs that are empty (no elements) in every one of ``references``."""
    sets = list(references)
    return [n for n in names if sets and all(np.asarray(r[n]).size == 0 for r in sets)]


def dense_sources(model: onnx.ModelProto, outputs: list[str]) -> EmptyOutputs:
    """For each output, the floating-point tensors the data-dependent ops behind it
    decide from: the op's float inputs, or, where it reads a mask or indices, the first
    float tensors above them (``NonZero(Greater(scores, t))`` reads ``scores``)."""
    found = EmptyOutputs()
    if not outputs:  # (shape inference is not free on a large model)
        return found
    graph = model.graph
    producer = {o: node for node in graph.node for o in node.output}
    types = _elem_types(model)
    fixed = {i.name for i in graph.initializer} | {i.name for i in graph.input} \
        | {o for node in graph.node if node.op_type == "Constant" for o in node.output}
    for output in outputs:
        ops, dense = _deciding_ops(output, producer), []
        for node in ops:
            dense += [t for t in _float_sources(node, producer, types, fixed) if t not in dense]
        if dense:
            named = ", ".join(f"{n.op_type} {n.name!r}" if n.name else n.op_type for n in ops)
            found.record[output] = (f"empty at every golden sample: its size depends on the data ({named});"
                                    f" the gates also read the tensors that decide it: {dense}")
            found.taps.update({t: tap_name(t) for t in dense})
            found.types.update({t: types[t] for t in dense})
        else:
            found.record[output] = ("empty at every golden sample and no op decides its size from dense values:"
                                    " no gate checked its values; give samples that produce it (spec key samples)")
    return found


def _deciding_ops(output: str, producer: Mapping[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The data-dependent ops among the output's ancestors, nearest first; the walk
    stops at each (what is above it is dense, and what it reads is gated)."""
    ops, seen, queue = [], {output}, deque([output])
    while queue:
        node = producer.get(queue.popleft())
        if node is None:
            continue
        if node.op_type in DATA_DEPENDENT:
            if all(node is not o for o in ops):
                ops.append(node)
            continue
        for name in node.input:
            if name and name not in seen:
                seen.add(name)
                queue.append(name)
    return ops


def _float_sources(node: onnx.NodeProto, producer: Mapping[str, onnx.NodeProto], types: Mapping[str, int],
                   fixed: set[str]) -> list[str]:
    """The computed float tensors a data-dependent op reads, directly or through
    integer and boolean ops (a comparison with a threshold, a cast)."""
    found: list[str] = []
    seen: set[str] = set()
    queue = deque(n for n in node.input if n)
    while queue:
        name = queue.popleft()
        if name in seen or name in fixed:
            continue
        seen.add(name)
        if types.get(name) in _FLOATS:
            found.append(name)
            continue
        above = producer.get(name)
        if above is not None and above.op_type not in DATA_DEPENDENT:
            queue.extend(n for n in above.input if n)
    return found


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Every main-graph tensor's element type, as shape inference finds it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference cannot follow: what the graph declares
        inferred = model
    graph = inferred.graph
    values = [*graph.value_info, *graph.input, *graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


def with_taps(model: onnx.ModelProto, found: EmptyOutputs) -> onnx.ModelProto:
    """The model with each tensor ``found`` taps also returned under its tap's name."""
    tapped = copy.deepcopy(model)
    graph = tapped.graph
    for tensor, tap in found.taps.items():
        graph.node.append(onnx.helper.make_node("Identity", [tensor], [tap], name=tap))
        graph.output.append(onnx.helper.make_tensor_value_info(tap, found.types[tensor], None))
    return tapped
