"""onnxruntime's own operators written as standard ONNX.

onnxruntime's graph optimiser fuses what it can into operators of its own, and writes
them into any model it saves (``optimized_model_filepath``; the transformer optimiser
does the same), which is how many models ship:

- ``LayerNormalization`` in the ONNX domain at any opset (the standard has it from
  opset 17) and ``SimplifiedLayerNormalization`` (RMS norm, never standard). Most
  transformer models are exported at opset 11-16, so onnxruntime runs them while onnx's
  checker refuses them ("No Op registered for LayerNormalization with domain_version of
  13"): these must be rewritten, or the model is refused with the reason;
- fusions in its ``com.microsoft`` domain (``FusedConv``, ``FusedGemm``, ``FusedMatMul``,
  the GELUs, ``SkipLayerNormalization``): valid ONNX, but no converter other than
  onnxruntime's own knows them ("These Op Not Support: ONNX::FusedConv"). Those written
  here are rewritten; any other is left to the engines that know it.

Each becomes the standard operators it fuses, which onnxruntime fuses back when it
loads the package; the standard copy is checked against the model under onnxruntime
(packager ``build``), and every engine's result is held to the accuracy gate as always.
"""

from __future__ import annotations

import math
from typing import Any, Callable

#: ONNX-domain operators onnxruntime registers, and the first opset that defines them
_STANDARD_FROM = {"LayerNormalization": 17, "SimplifiedLayerNormalization": 10_000}
_MICROSOFT = "com.microsoft"


def _default_opset(model: Any) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _nonstandard(node: Any, opset: int) -> bool:
    return node.domain in ("", "ai.onnx") and opset < _STANDARD_FROM.get(node.op_type, 0)


def _rewritable(node: Any, opset: int) -> bool:
    return _nonstandard(node, opset) or (node.domain == _MICROSOFT and node.op_type in _EXPANSIONS)


def nonstandard_ops(model: Any) -> list[str]:
    """The operator types, at any depth, that are onnxruntime's and that this module
    writes as standard ONNX (the ONNX-domain ones must be, for onnx's checker)."""
    from .signature import all_nodes

    opset = _default_opset(model)
    return sorted({node.op_type for node in all_nodes(model.graph) if _rewritable(node, opset)})


class _Node:
    """One node's rewrite: its attributes, fresh tensor names under its name, and the
    standard nodes that replace it."""

    def __init__(self, node: Any, graph: Any, prefix: str, opset: int, types: dict[str, int],
                 ranks: dict[str, int]) -> None:
        from onnx import TensorProto, helper

        self.node, self._graph, self._prefix, self.opset, self.ranks = node, graph, prefix, opset, ranks
        self.attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.inputs = list(node.input) + [""] * 8  # optional inputs read as ""
        self.dtype = next((types[name] for name in node.input if name in types), TensorProto.FLOAT)
        self.nodes: list[Any] = []
        self._count = 0

    def attribute(self, name: str, default: Any) -> Any:
        value = self.attributes.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def output(self, index: int) -> str:
        """The node's output ``index`` where it is used, else a fresh name."""
        outputs = list(self.node.output)
        return outputs[index] if index < len(outputs) and outputs[index] else self._name("unused")

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self._prefix}/{hint}_{self._count}"

    def constant(self, value: Any, dtype: int | None = None) -> str:
        import numpy as np
        from onnx import helper, numpy_helper

        name = self._name("constant")
        array = np.asarray(value, helper.tensor_dtype_to_np_dtype(self.dtype if dtype is None else dtype))
        self._graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def add(self, op: str, inputs: list[str], output: str | None = None, **attributes: Any) -> str:
        from onnx import helper

        output = output or self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def reduce_mean(self, x: str, axes: list[int], output: str | None = None) -> str:
        if self.opset >= 18:  # axes became an input
            from onnx import TensorProto

            return self.add("ReduceMean", [x, self.constant(axes, TensorProto.INT64)], output, keepdims=1)
        return self.add("ReduceMean", [x], output, axes=axes, keepdims=1)


def _normalise(r: _Node, x: str, scale: str, bias: str, centred: bool, axis: int, epsilon: float, y: str,
               mean: str | None, inv_std: str | None) -> None:
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the axes from ``axis`` (RMS
    norm without centring)."""
    if axis >= 0:  # from that axis to the last: the input's rank makes it negative
        if x not in r.ranks:
            raise ValueError(f"{r.node.op_type} {r.node.name!r} normalises from axis {axis}, and the rank of its"
                             f" input {x!r} is not known")
        axis -= r.ranks[x]
    axes = list(range(axis, 0))
    spread = r.add("Sub", [x, r.reduce_mean(x, axes, mean)]) if centred else x
    variance = r.reduce_mean(r.add("Mul", [spread, spread]), axes)
    std = r.add("Sqrt", [r.add("Add", [variance, r.constant(epsilon)])])
    normal = r.add("Mul", [spread, r.add("Reciprocal", [std], inv_std)])
    if bias:
        r.add("Add", [r.add("Mul", [normal, scale]), bias], y)
    else:
        r.add("Mul", [normal, scale], y)


def _layer_norm(r: _Node) -> bool:
    centred = r.node.op_type == "LayerNormalization"
    _normalise(r, r.inputs[0], r.inputs[1], r.inputs[2] if centred else "", centred,
               int(r.attribute("axis", -1)), float(r.attribute("epsilon", 1e-5)), r.output(0),
               r.output(1) if centred else None, r.output(2 if centred else 1))
    return True


def _skip_layer_norm(r: _Node) -> bool:
    """SkipLayerNormalization(input, skip, gamma, beta?, bias?): a layer norm of
    input + skip (+ bias); outputs y, mean?, inv_std?, the sum?"""
    total = r.add("Add", [r.inputs[0], r.inputs[1]], None if r.inputs[4] else r.output(3))
    if r.inputs[4]:
        total = r.add("Add", [total, r.inputs[4]], r.output(3))
    _normalise(r, total, r.inputs[2], r.inputs[3], True, -1, float(r.attribute("epsilon", 1e-12)), r.output(0),
               r.output(1), r.output(2))
    return True


def _activation(r: _Node, x: str, name: str, params: list[float], y: str) -> bool:
    """The activation a fused Conv or Gemm names, applied to ``x``; False for one not
    written here."""
    if name in ("", "Identity"):
        r.add("Identity", [x], y)
    elif name in ("Relu", "Sigmoid", "Tanh"):
        r.add(name, [x], y)
    elif name == "LeakyRelu":
        r.add("LeakyRelu", [x], y, alpha=params[0] if params else 0.01)
    elif name == "HardSigmoid":
        r.add("HardSigmoid", [x], y, alpha=params[0] if params else 0.2, beta=params[1] if len(params) > 1 else 0.5)
    elif name == "Clip" and len(params) == 2:
        if r.opset >= 11:
            r.add("Clip", [x, r.constant(params[0]), r.constant(params[1])], y)
        else:
            r.add("Clip", [x], y, min=params[0], max=params[1])
    else:
        return False
    return True


_CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _fused_conv(r: _Node) -> bool:
    """FusedConv(X, W, B?, Z?): activation(Conv(X, W, B) + Z)."""
    conv = r.add("Conv", [name for name in r.inputs[:3] if name],
                 **{k: r.attribute(k, None) for k in _CONV_ATTRIBUTES if k in r.attributes})
    if r.inputs[3]:
        conv = r.add("Add", [conv, r.inputs[3]])
    return _activation(r, conv, r.attribute("activation", ""), list(r.attribute("activation_params", [])),
                       r.output(0))


def _fused_gemm(r: _Node) -> bool:
    """FusedGemm(A, B, C?): activation(Gemm(A, B, C))."""
    gemm = r.add("Gemm", [name for name in r.inputs[:3] if name],
                 **{k: r.attribute(k, None) for k in ("alpha", "beta", "transA", "transB") if k in r.attributes})
    activation = r.attribute("activation", "")
    if activation not in ("", "Relu", "Sigmoid", "Tanh", "LeakyRelu"):  # others' parameters are not checked here
        return False
    return _activation(r, gemm, activation, [r.attribute("activation_alpha", 0.01)], r.output(0))


def _fused_matmul(r: _Node) -> bool:
    """FusedMatMul(A, B): alpha * op(A) @ op(B), op transposing the last two axes; the
    batch-transposing forms are left as they are."""
    if r.attribute("transBatchA", 0) or r.attribute("transBatchB", 0):
        return False
    operands = []
    for name, flag in ((r.inputs[0], "transA"), (r.inputs[1], "transB")):
        if r.attribute(flag, 0):
            if r.ranks.get(name, 0) < 2:
                return False
            rank = r.ranks[name]
            name = r.add("Transpose", [name], perm=[*range(rank - 2), rank - 1, rank - 2])
        operands.append(name)
    alpha = float(r.attribute("alpha", 1.0))
    if alpha == 1.0:
        r.add("MatMul", operands, r.output(0))
    else:
        r.add("Mul", [r.add("MatMul", operands), r.constant(alpha)], r.output(0))
    return True


def _erf_gelu(r: _Node, x: str) -> None:
    """0.5 x (1 + erf(x / sqrt 2))"""
    erf = r.add("Erf", [r.add("Div", [x, r.constant(math.sqrt(2.0))])])
    r.add("Mul", [r.add("Mul", [x, r.add("Add", [erf, r.constant(1.0)])]), r.constant(0.5)], r.output(0))


def _gelu(r: _Node) -> bool:
    _erf_gelu(r, r.inputs[0])
    return True


def _bias_gelu(r: _Node) -> bool:
    _erf_gelu(r, r.add("Add", [r.inputs[0], r.inputs[1]]))
    return True


def _fast_gelu(r: _Node) -> bool:
    """FastGelu(X, bias?): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"""
    x = r.add("Add", [r.inputs[0], r.inputs[1]]) if r.inputs[1] else r.inputs[0]
    cubic = r.add("Mul", [r.add("Mul", [r.add("Mul", [x, x]), x]), r.constant(0.044715)])
    inner = r.add("Mul", [r.add("Add", [x, cubic]), r.constant(math.sqrt(2.0 / math.pi))])
    half = r.add("Mul", [x, r.constant(0.5)])
    r.add("Mul", [half, r.add("Add", [r.add("Tanh", [inner]), r.constant(1.0)])], r.output(0))
    return True


def _quick_gelu(r: _Node) -> bool:
    """QuickGelu(X): x sigmoid(alpha x)"""
    x = r.inputs[0]
    scaled = r.add("Mul", [x, r.constant(float(r.attribute("alpha", 1.702)))])
    r.add("Mul", [x, r.add("Sigmoid", [scaled])], r.output(0))
    return True


#: com.microsoft operators written here, and the ONNX-domain ones in :data:`_STANDARD_FROM`
_EXPANSIONS: dict[str, Callable[[_Node], bool]] = {
    "FusedConv": _fused_conv, "FusedGemm": _fused_gemm, "FusedMatMul": _fused_matmul, "Gelu": _gelu,
    "BiasGelu": _bias_gelu, "FastGelu": _fast_gelu, "QuickGelu": _quick_gelu,
    "SkipLayerNormalization": _skip_layer_norm,
}
_DEFAULT_DOMAIN = {"LayerNormalization": _layer_norm, "SimplifiedLayerNormalization": _layer_norm}


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
    know), for the types and ranks the rewrites need; the model itself where that fails."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a help here, never a requirement
        return model


def expand_nonstandard(model: Any) -> list[str]:
    """Rewrite, in place, the operators of :func:`nonstandard_ops` as standard ONNX;
    returns the operator types rewritten. Raises ValueError for an ONNX-domain one it
    cannot rewrite; a com.microsoft one it cannot is left as it is."""
    import onnx

    from .signature import all_graphs

    opset = _default_opset(model)
    if not nonstandard_ops(model):
        return []
    rewritten: set[str] = set()
    inferred = all_graphs(_inferred(model).graph)
    # subgraphs first: a parent's rewrite copies them (all_graphs lists a graph before its subgraphs)
    for graph, stated in reversed(list(zip(all_graphs(model.graph), inferred))):
        if not any(_rewritable(node, opset) for node in graph.node):
            continue
        types, ranks = _stated(stated)
        nodes = []
        for number, node in enumerate(graph.node):
            if _rewritable(node, opset):
                rewrite = _Node(node, graph, f"{node.name or node.op_type}_{number}", opset, types, ranks)
                if _nonstandard(node, opset):  # must be rewritten: its ValueError says why it cannot
                    done = _DEFAULT_DOMAIN[node.op_type](rewrite)
                else:
                    try:
                        done = _EXPANSIONS[node.op_type](rewrite)
                    except Exception:  # a form this module does not know: onnxruntime still runs it
                        done = False
                if done:
                    nodes += rewrite.nodes
                    rewritten.add(node.op_type)
                    continue
            nodes.append(onnx.NodeProto())
            nodes[-1].CopyFrom(node)
        del graph.node[:]
        graph.node.extend(nodes)
    return sorted(rewritten)
