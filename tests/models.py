"""Small real ONNX networks the tests build themselves (no downloads)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
TINYCNN = REPO / "examples" / "tinycnn" / "tinycnn.onnx"


def make_tinycnn() -> onnx.ModelProto:
    spec = importlib.util.spec_from_file_location("make_model", REPO / "examples" / "tinycnn" / "make_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tinycnn()


def make_two_tower(seed: int = 7) -> onnx.ModelProto:
    """Two inputs with awkward names (one int64 token ids with a dynamic length, one
    float features), an embedding lookup, a LayerNorm-ish block and two outputs."""
    rng = np.random.default_rng(seed)
    emb = numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "emb")
    w = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32) / 4, "w")
    wf = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32) / 3, "wf")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("Gather", ["emb", "token_ids:0"], ["e"]),
        helper.make_node("ReduceMean", ["e", "axes"], ["pooled"], keepdims=0),
        helper.make_node("LayerNormalization", ["pooled", "ln_scale", "ln_bias"], ["normed"], axis=-1),
        helper.make_node("MatMul", ["normed", "w"], ["a"]),
        helper.make_node("MatMul", ["features/dense", "wf"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores/sigmoid"]),
        helper.make_node("ArgMax", ["logits"], ["best"], axis=1, keepdims=0),
    ]
    inits = [emb, w, wf, axes,
             numpy_helper.from_array(np.ones(16, np.float32), "ln_scale"),
             numpy_helper.from_array(np.zeros(16, np.float32), "ln_bias")]
    graph = helper.make_graph(
        nodes, "two_tower",
        [helper.make_tensor_value_info("token_ids:0", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("features/dense", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("scores/sigmoid", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("best", TensorProto.INT64, ["batch"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="modelpack-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path
