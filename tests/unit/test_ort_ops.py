"""onnxruntime's own operators written as standard ONNX: each rewrite must compute what
onnxruntime computes for the operator it replaces, with no onnxruntime operator left."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from orchestrator.packager.ort_ops import expand_nonstandard, nonstandard_ops

RNG = np.random.default_rng(12)


def _model(node: Any, inputs: dict[str, tuple[int, ...]], outputs: list[str], constants: dict[str, np.ndarray],
           opset: int = 13) -> Any:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in constants.items()])
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=imports, ir_version=8)


def _outputs(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _weights(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32) * 0.5


def _cases() -> list[tuple[str, Any, dict[str, tuple[int, ...]], dict[str, np.ndarray]]]:
    ms = "com.microsoft"
    conv = {"W": _weights(8, 4, 3, 3), "B": _weights(8)}
    width = {"g": _weights(16) + 1, "b": _weights(16)}
    return [
        ("FusedConv Relu + Z", helper.make_node("FusedConv", ["x", "W", "B", "z"], ["y"], domain=ms, pads=[1] * 4,
                                                activation="Relu"), {"x": (1, 4, 9, 9), "z": (1, 8, 9, 9)}, conv),
        ("FusedConv LeakyRelu", helper.make_node("FusedConv", ["x", "W"], ["y"], domain=ms, strides=[2, 2],
                                                 activation="LeakyRelu", activation_params=[0.2]),
         {"x": (1, 4, 9, 9)}, conv),
        ("FusedConv Clip", helper.make_node("FusedConv", ["x", "W", "B"], ["y"], domain=ms, activation="Clip",
                                            activation_params=[0.0, 6.0]), {"x": (1, 4, 9, 9)}, conv),
        ("FusedConv HardSigmoid", helper.make_node("FusedConv", ["x", "W", "B"], ["y"], domain=ms, group=1,
                                                   activation="HardSigmoid", activation_params=[0.3, 0.4]),
         {"x": (1, 4, 9, 9)}, conv),
        ("FusedGemm LeakyRelu", helper.make_node("FusedGemm", ["x", "M", "c"], ["y"], domain=ms, transB=1, alpha=0.7,
                                                 beta=0.3, activation="LeakyRelu", activation_alpha=0.1),
         {"x": (3, 6)}, {"M": _weights(5, 6), "c": _weights(5)}),
        ("FusedMatMul", helper.make_node("FusedMatMul", ["x", "M"], ["y"], domain=ms, transA=1, transB=1, alpha=0.25),
         {"x": (2, 6, 3)}, {"M": _weights(2, 5, 6)}),
        ("Gelu", helper.make_node("Gelu", ["x"], ["y"], domain=ms), {"x": (2, 7)}, {}),
        ("BiasGelu", helper.make_node("BiasGelu", ["x", "b"], ["y"], domain=ms), {"x": (2, 7)}, {"b": _weights(7)}),
        ("FastGelu", helper.make_node("FastGelu", ["x", "b"], ["y"], domain=ms), {"x": (2, 7)}, {"b": _weights(7)}),
        ("QuickGelu", helper.make_node("QuickGelu", ["x"], ["y"], domain=ms, alpha=1.5), {"x": (2, 7)}, {}),
        ("SkipLayerNormalization", helper.make_node(
            "SkipLayerNormalization", ["x", "s", "g", "b", "bias"], ["y", "", "", "sum"], domain=ms, epsilon=1e-5),
         {"x": (2, 3, 16), "s": (2, 3, 16)}, {**width, "bias": _weights(16)}),
        ("LayerNormalization opset 13", helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv"],
                                                         axis=2, epsilon=1e-3), {"x": (2, 3, 16)}, width),
        ("SimplifiedLayerNormalization", helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"],
                                                          epsilon=1e-6), {"x": (2, 3, 16)}, {"g": width["g"]}),
    ]


@pytest.mark.parametrize("label, node, inputs, constants", _cases(), ids=[c[0] for c in _cases()])
def test_each_rewrite_computes_what_onnxruntime_computes(label, node, inputs, constants):
    model = _model(node, inputs, [o for o in node.output if o], constants)
    feeds = {name: RNG.standard_normal(shape).astype(np.float32) for name, shape in inputs.items()}
    want = _outputs(model, feeds)
    for value, array in zip(model.graph.output, want):  # the checker wants every output's shape
        value.type.tensor_type.shape.dim.extend(helper.make_tensor_value_info("", 1, array.shape).type.tensor_type.shape.dim)
    assert expand_nonstandard(model) == [node.op_type]
    assert not nonstandard_ops(model) and all(n.domain in ("", "ai.onnx") for n in model.graph.node), label
    onnx.checker.check_model(model)
    for got, expected in zip(_outputs(model, feeds), want):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_microsoft_operator_in_a_form_not_written_here_is_left_for_onnxruntime():
    node = helper.make_node("FusedMatMul", ["x", "M"], ["y"], domain="com.microsoft", transBatchA=1)
    model = _model(node, {"x": (2, 3, 4)}, ["y"], {"M": _weights(3, 2, 5)})
    assert expand_nonstandard(model) == []
    assert [n.op_type for n in model.graph.node] == ["FusedMatMul"]
