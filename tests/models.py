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


#: real networks that ship inside PyPI wheels: (distribution, version, member in the wheel)
PYPI_MODELS = {
    "ppocr_cls": ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "ppocr_det": ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "silero_vad": ("silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx"),
    "silero_vad_sequence": ("silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx"),
    "yolov8n": ("nudenet", "3.4.2", "nudenet/320n.onnx"),
}
CACHE = REPO / ".cache" / "test-models"


def pypi_model(key: str) -> Path:
    """The .onnx file taken out of a pinned PyPI wheel (downloaded once into .cache)."""
    import subprocess
    import sys
    import zipfile

    dist, version, member = PYPI_MODELS[key]
    dest = CACHE / f"{key}.onnx"
    if dest.is_file():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = CACHE / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    f"{dist}=={version}", "-d", str(wheels)], check=True)
    wheel = next(wheels.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))  # shared by several models
    with zipfile.ZipFile(wheel) as archive:
        partial = dest.with_suffix(".partial")
        partial.write_bytes(archive.read(member))
        partial.replace(dest)
    return dest


if __name__ == "__main__":  # prefetch for offline test runs: python -m tests.models
    for name in PYPI_MODELS:
        print(pypi_model(name))


def renamed_specs(base, count: int, prefix: str = "job") -> list:
    """``count`` copies of one loaded spec under different package names: a large matrix
    of distinct jobs without re-reading the model each time."""
    return [type(base)(base.path, base.spec.model_copy(update={"name": f"{prefix}{i:04d}"}), base.model, None)
            for i in range(count)]
