"""onnxruntime's own operators in the standard ONNX domain, written as standard ONNX.

onnxruntime registers ``LayerNormalization`` in the ONNX domain for every opset (the
standard has it from opset 17 only) and ``SimplifiedLayerNormalization`` (RMS norm) too,
and its graph optimiser fuses them into any model it saves (``optimized_model_filepath``;
the transformer optimiser does the same). Most transformer models are exported at opset
11-16 and shipped optimised, so onnxruntime runs them while onnx's checker refuses them
("No Op registered for LayerNormalization with domain_version of 13") and no converter
knows them. They are rewritten here into the standard operators they fuse
(ReduceMean, Sub, Mul, Add, Sqrt, Div), which onnxruntime fuses back when it loads the
package; every engine's result is then held to the accuracy gate as always.
"""

from __future__ import annotations

from typing import Any

#: the latest opset in which onnxruntime's registration is not part of the standard
_NONSTANDARD_BEFORE = {"LayerNormalization": 17, "SimplifiedLayerNormalization": 10_000}


def _default_opset(model: Any) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _nonstandard(node: Any, opset: int) -> bool:
    return node.domain in ("", "ai.onnx") and opset < _NONSTANDARD_BEFORE.get(node.op_type, 0)


def nonstandard_ops(model: Any) -> list[str]:
    """The operator types, at any depth, that are onnxruntime's registrations and not the
    standard's at the model's opset."""
    from .signature import all_nodes

    opset = _default_opset(model)
    return sorted({node.op_type for node in all_nodes(model.graph) if _nonstandard(node, opset)})


def _stated(graph: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Element types and ranks the graph states (initializers, inputs, outputs and
    value_info, including what shape inference added)."""
    types = {t.name: t.data_type for t in graph.initializer}
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.WhichOneof("value") == "tensor_type":
            types.setdefault(value.name, value.type.tensor_type.elem_type)
            if value.type.tensor_type.HasField("shape"):
                ranks.setdefault(value.name, len(value.type.tensor_type.shape.dim))
    return types, ranks


def _inferred(model: Any) -> Any:
    """A copy of ``model`` with onnx's shape inference run (it skips operators it does not
    know), for the ranks a positive ``axis`` needs; the model itself where that fails."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a help here, never a requirement
        return model


def _expand(node: Any, types: dict[str, int], ranks: dict[str, int], make: Any) -> list[Any]:
    """Standard nodes computing what ``node`` computes (same output names)."""
    from onnx import TensorProto, helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = int(attributes.get("axis", -1))
    if axis >= 0:  # from that axis to the last: the input's rank makes it negative
        if node.input[0] not in ranks:
            raise ValueError(f"{node.op_type} {node.name!r} normalises from axis {axis}, and the rank of its"
                             f" input {node.input[0]!r} is not known")
        axis -= ranks[node.input[0]]
    axes = list(range(axis, 0))
    x, scale = node.input[0], node.input[1]
    dtype = types.get(scale, types.get(x, TensorProto.FLOAT))
    epsilon = make.constant(float(attributes.get("epsilon", 1e-5)), dtype)
    y, extra = node.output[0], list(node.output[1:])
    nodes = []
    if node.op_type == "LayerNormalization":
        mean = extra[0] if extra and extra[0] else make.name("mean")
        nodes += [helper.make_node("ReduceMean", [x], [mean], axes=axes, keepdims=1),
                  helper.make_node("Sub", [x, mean], [centred := make.name("centred")])]
        spread, inv_std = centred, extra[1] if len(extra) > 1 and extra[1] else make.name("inv_std")
    else:  # SimplifiedLayerNormalization: no centring; its second output is the inverse std
        spread, inv_std = x, extra[0] if extra and extra[0] else make.name("inv_std")
    nodes += [helper.make_node("Mul", [spread, spread], [squares := make.name("squares")]),
              helper.make_node("ReduceMean", [squares], [variance := make.name("variance")], axes=axes, keepdims=1),
              helper.make_node("Add", [variance, epsilon], [shifted := make.name("shifted")]),
              helper.make_node("Sqrt", [shifted], [std := make.name("std")]),
              helper.make_node("Reciprocal", [std], [inv_std]),
              helper.make_node("Mul", [spread, inv_std], [normal := make.name("normal")])]
    bias = node.input[2] if node.op_type == "LayerNormalization" and len(node.input) > 2 and node.input[2] else ""
    nodes.append(helper.make_node("Mul", [normal, scale], [make.name("scaled") if bias else y]))
    if bias:
        nodes.append(helper.make_node("Add", [nodes[-1].output[0], bias], [y]))
    return nodes


class _Maker:
    """Fresh tensor names under one node's name, and the constants they need."""

    def __init__(self, graph: Any, prefix: str) -> None:
        self._graph, self._prefix, self._count = graph, prefix, 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self._prefix}/{hint}_{self._count}"

    def constant(self, value: float, dtype: int) -> str:
        from onnx import helper

        name = self.name("epsilon")
        self._graph.initializer.append(helper.make_tensor(name, dtype, [], [value]))
        return name


def expand_nonstandard(model: Any) -> list[str]:
    """Rewrite, in place, every operator of :func:`nonstandard_ops` as standard ONNX;
    returns the operator types rewritten. Raises ValueError for a node it cannot rewrite."""
    import onnx

    from .signature import all_graphs

    opset, rewritten = _default_opset(model), nonstandard_ops(model)
    if not rewritten:
        return []
    inferred = all_graphs(_inferred(model).graph)
    # subgraphs first: a parent's rewrite copies them (all_graphs lists a graph before its subgraphs)
    for graph, stated in reversed(list(zip(all_graphs(model.graph), inferred))):
        if not any(_nonstandard(node, opset) for node in graph.node):
            continue
        types, ranks = _stated(stated)
        nodes = []
        for number, node in enumerate(graph.node):
            if _nonstandard(node, opset):
                nodes += _expand(node, types, ranks, _Maker(graph, f"{node.name or node.op_type}_{number}"))
            else:
                nodes.append(onnx.NodeProto())
                nodes[-1].CopyFrom(node)
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten
