"""The fused pre/post-processing graphs against the NumPy reference, on real onnxruntime,
including the edge cases users hit: 1x1 and odd-sized images, all-zero scores, k larger
than the class count, no detections, more boxes than max_detections."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from orchestrator.packager.functions import FunctionError, fuse, resolve
from orchestrator.runtime.functions import apply_post, apply_pre

IMAGENET = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def identity(shape: list, dtype: int = TensorProto.FLOAT, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", dtype, shape)],
                              [helper.make_tensor_value_info("y", dtype, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, feeds: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def images(size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8), np.zeros((*size, 3), np.uint8),
            np.full((*size, 3), 255, np.uint8)]


@pytest.mark.parametrize("image_size, model_hw, steps", [
    ((1, 1), (8, 8), ["resize"]),
    ((7, 5), (3, 3), ["resize", "bgr_to_rgb", {"normalize": IMAGENET}]),
    ((480, 640), (224, 224), [{"resize": {"size": 256}}, {"center_crop": {"size": 224}}, {"normalize": IMAGENET}]),
    ((9, 13), (9, 13), ["rgb_to_bgr", {"normalize": {"scale": 2.0, "mean": 3.0, "std": 0.5}}, "hwc_to_nchw"]),
    ((31, 17), (4, 6), ["resize"]),  # downscale by odd factors
])
def test_pre_processing_graph_matches_numpy(image_size, model_hw, steps):
    model = identity([1, 3, *model_hw])
    resolved = resolve(model, {"pre": [{"image": {"size": list(image_size)}}, *steps]}, {})
    fused, _ = fuse(model, resolved)
    for image in images(image_size):
        got = run(fused, {"image": image})["y"]
        want = apply_pre({"image": image}, resolved.pre)["x"]
        assert got.shape == (1, 3, *model_hw) == want.shape
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_nhwc_half_precision_model_gets_its_layout_and_dtype():
    model = identity([1, 6, 4, 3], TensorProto.FLOAT16)
    resolved = resolve(model, {"pre": [{"image": {"size": [12, 8]}}, "resize", {"normalize": IMAGENET}]}, {})
    assert [s["op"] for s in resolved.pre][-2:] == ["layout", "cast"]
    fused, _ = fuse(model, resolved)
    image = images((12, 8))[0]
    got = run(fused, {"image": image})["y"]
    assert got.dtype == np.float16 and got.shape == (1, 6, 4, 3)
    np.testing.assert_allclose(got, apply_pre({"image": image}, resolved.pre)["x"], atol=2e-3)


def test_resize_agrees_with_an_independent_bilinear_formula():
    """The NumPy reference itself, checked against a direct per-pixel formula."""
    model = identity([1, 3, 3, 5])
    resolved = resolve(model, {"pre": [{"image": {"size": [2, 4]}}, "resize"]}, {})
    image = images((2, 4), seed=3)[0]
    out = apply_pre({"image": image}, resolved.pre)["x"][0]
    src = image.astype(np.float64).transpose(2, 0, 1)
    for y in range(3):
        for x in range(5):
            sy = min(max((y + 0.5) * 2 / 3 - 0.5, 0), 1)
            sx = min(max((x + 0.5) * 4 / 5 - 0.5, 0), 3)
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, 1), min(x0 + 1, 3)
            wy, wx = sy - y0, sx - x0
            value = (src[:, y0, x0] * (1 - wy) * (1 - wx) + src[:, y0, x1] * (1 - wy) * wx
                     + src[:, y1, x0] * wy * (1 - wx) + src[:, y1, x1] * wy * wx)
            np.testing.assert_allclose(out[:, y, x], value, atol=1e-3)


def logits_model(classes: int) -> onnx.ModelProto:
    return identity([1, classes])


@pytest.mark.parametrize("scores", [
    np.random.default_rng(4).standard_normal((1, 10)).astype(np.float32),
    np.zeros((1, 10), np.float32),  # all equal: lower indices first
    np.array([[1, 5, 5, 2, 5, 0, 0, 0, 0, 9]], np.float32),  # ties inside the top k
])
def test_softmax_topk_labels(scores):
    labels = [f"class {i}" for i in range(10)]
    model = logits_model(10)
    resolved = resolve(model, {"post": ["softmax", {"topk": {"k": 5, "labels": "labels.txt"}}]},
                       {"labels.txt": labels})
    fused, _ = fuse(model, resolved)
    got = run(fused, {"x": scores})
    want = apply_post({"y": scores}, resolved.post)
    np.testing.assert_array_equal(got["indices"], want["indices"])
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-6)
    named = apply_post(got, resolved.runtime)["labels"]
    assert list(named) == [labels[i] for i in want["indices"]]
    assert want["indices"].tolist() == sorted(range(10), key=lambda i: (-scores[0, i], i))[:5]


def test_topk_larger_than_the_class_count_and_a_threshold():
    model = logits_model(3)
    resolved = resolve(model, {"post": [{"topk": {"k": 10, "threshold": 0.5}}]}, {})
    fused, _ = fuse(model, resolved)
    for scores in (np.array([[0.9, 0.1, 0.6]], np.float32), np.zeros((1, 3), np.float32)):
        got = run(fused, {"x": scores})
        want = apply_post({"y": scores}, resolved.post)
        np.testing.assert_array_equal(got["indices"], want["indices"])
        np.testing.assert_array_equal(got["scores"], want["scores"])
    assert run(fused, {"x": np.zeros((1, 3), np.float32)})["indices"].shape == (0,)


def test_argmax_and_sigmoid():
    model = logits_model(7)
    resolved = resolve(model, {"post": ["sigmoid", "argmax"]}, {})
    fused, _ = fuse(model, resolved)
    x = np.random.default_rng(5).standard_normal((1, 7)).astype(np.float32)
    assert run(fused, {"x": x})["class"].tolist() == apply_post({"y": x}, resolved.post)["class"].tolist() \
        == [int(np.argmax(x))]


def raw_detections(rows: int, classes: int, seed: int, objectness: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 100, (rows, 2))
    sizes = rng.uniform(5, 40, (rows, 2))
    columns = [centres, sizes] + ([rng.uniform(0, 1, (rows, 1))] if objectness else []) + [rng.uniform(0, 1, (rows, classes))]
    return np.concatenate(columns, axis=1)[None].astype(np.float32)


@pytest.mark.parametrize("fmt, rows, classes, options", [
    ("yolov8", 60, 3, {"max_detections": 5}),           # more boxes than the max
    ("yolov8", 60, 3, {"score": 0.999999}),             # no detections
    ("yolov8", 1, 1, {}),                               # a single row
    ("yolov5", 80, 2, {"iou": 0.3, "score": 0.2}),
    ("xyxy", 40, 4, {"iou": 0.7}),
])
def test_detections_match_the_numpy_nms(fmt, rows, classes, options):
    objectness = fmt == "yolov5"
    raw = raw_detections(rows, classes, seed=rows + classes, objectness=objectness)
    if fmt == "yolov8":
        raw = raw.transpose(0, 2, 1).copy()
    if fmt == "xyxy":
        raw[0, :, 2:4] += raw[0, :, 0:2]  # make x2 > x1
    model = identity(list(raw.shape))
    resolved = resolve(model, {"post": [{"detections": {"format": fmt, **options}}]}, {})
    fused, _ = fuse(model, resolved)
    got = run(fused, {"x": raw})
    want = apply_post({"y": raw}, resolved.post)
    assert got["boxes"].shape == want["boxes"].shape
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-6)
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-4)
    assert len(want["scores"]) <= options.get("max_detections", 100)
    if options.get("score") == 0.999999:
        assert got["boxes"].shape == (0, 4)
    if options.get("max_detections") == 5:
        assert len(want["scores"]) == 5 and np.all(np.diff(want["scores"]) <= 0)


def test_old_opset_models_are_raised_and_recorded():
    model = identity([1, 3, 4, 4], opset=11)
    resolved = resolve(model, {"pre": [{"image": {"size": [4, 4]}}]}, {})
    fused, notes = fuse(model, resolved)
    assert notes == ["opset raised from 11 to 13"]
    image = images((4, 4))[0]
    np.testing.assert_array_equal(run(fused, {"image": image})["y"], image.transpose(2, 0, 1)[None].astype(np.float32))


@pytest.mark.parametrize("spec, message", [
    ({"pre": ["resize"]}, "first pre step must be `image`"),
    ({"pre": ["image", {"center_crop": {"size": 9}}]}, "larger than the image"),
    ({"pre": [{"image": {"size": [10, 10]}}]}, "add a resize step"),
    ({"pre": ["image", "blur"]}, "unknown pre step 'blur'"),
    ({"pre": ["image", {"resize": {"sise": 3}}]}, "unknown option(s) ['sise']"),
    ({"post": [{"topk": {"k": 0}}]}, "k: must be a positive integer"),
    ({"post": ["argmax", "softmax"]}, "nothing can follow argmax"),
    ({"post": [{"topk": {"labels": "l.txt"}}]}, "l.txt was not provided"),
    ({"output": "nope", "post": ["softmax"]}, "'nope' is not a model output"),
    ({"post": [{"detections": {"format": "ssd"}}]}, "format: must be one of"),
])
def test_bad_function_specs_say_which_step_and_why(spec, message):
    with pytest.raises(FunctionError) as info:
        resolve(logits_model(10) if "post" in spec else identity([1, 3, 4, 4]), spec, {})
    assert message in str(info.value)


def test_a_whole_classifier_pipeline_image_in_labels_out():
    """Pre and post together on a real (small) network whose input is called like the new one."""
    from tests.models import make_tinycnn

    model = make_tinycnn()  # input "image" [batch, 3, 32, 32] -> "probs" [batch, 10]
    labels = [f"label {i}" for i in range(10)]
    resolved = resolve(model, {"pre": [{"image": {"size": [40, 48], "channels": "BGR"}}, "resize", "bgr_to_rgb",
                                       {"normalize": {"scale": 1 / 255, "mean": 0.5, "std": 0.25}}],
                               "post": ["softmax", {"topk": {"k": 3, "labels": "labels.txt"}}]},
                       {"labels.txt": labels})
    fused, _ = fuse(model, resolved)
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for image in images((40, 48), seed=9):
        got = run(fused, {"image": image})
        model_out = dict(zip(["probs"], plain.run(None, apply_pre({"image": image}, resolved.pre))))
        want = apply_post(model_out, resolved.post + resolved.runtime)
        np.testing.assert_array_equal(got["indices"], want["indices"])
        np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
        assert list(apply_post(got, resolved.runtime)["labels"]) == list(want["labels"])
        assert set(want["labels"]) <= set(labels) and len(want["labels"]) == 3


def test_quantisation_preparation_handles_constant_weights_and_old_opsets(tmp_path):
    """PaddleOCR-style exports keep weights as Constant nodes at opset 11; int8-static must
    prepare them (and say so) rather than fail."""
    from onnx import numpy_helper

    from orchestrator.packager.accelerate import prepare_for_quantisation, transform

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["w"], value=weight),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "paddle_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    source = tmp_path / "paddle_like.onnx"
    onnx.save(model, str(source))
    notes = prepare_for_quantisation(source, tmp_path / "prepared.onnx")
    assert "1 Constant nodes turned into initializers" in notes and "opset raised from 11 to 13" in notes
    prepared = onnx.load(str(tmp_path / "prepared.onnx"))
    assert not [n for n in prepared.graph.node if n.op_type == "Constant"]
    calibration = rng.uniform(0, 1, (4, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calibration.npz", x=calibration)
    notes = transform("int8-static", source, tmp_path / "int8.onnx", tmp_path / "calibration.npz")
    quantised = onnx.load(str(tmp_path / "int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in quantised.graph.node)
    assert any("calibrated on 4 samples" in n for n in notes)
    x = calibration[0]  # within the calibrated range: int8 error is a few % of it
    want = run(model, {"x": x})["y"]
    np.testing.assert_allclose(run(quantised, {"x": x})["y"], want, atol=0.05 * float(want.max()))
