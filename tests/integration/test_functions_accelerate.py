"""Function and acceleration libraries end to end, in the real Docker build image:
an image-in / top-5-labels-out classifier and a detector with NMS, both checked on fresh
inputs against the NumPy pipeline; an int8-static variant that wins where it passes a
user-metric gate; an fp16 variant rejected where it breaks accuracy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.runtime import load
from orchestrator.runtime.archive import extract
from orchestrator.runtime.functions import apply_post, apply_pre
from tests.models import TINYCNN, pypi_model, smooth_images


@pytest.fixture
def docker_hosts(tmp_path: Path, docker_client) -> Path:
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n  - {name: dock, transport: docker, targets: [linux-x86_64], slots: 2}\n")
    return path


def build(capsys, tmp_path: Path, hosts: Path, model: Path, name: str, files: dict[str, object] | None = None,
          **fields) -> tuple[int, Path | None, dict | None, str]:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copyfile(model, folder / "model.onnx")
    for file_name, content in (files or {}).items():
        if isinstance(content, dict):
            np.savez(folder / file_name, **content)
        else:
            (folder / file_name).write_text(str(content))
    spec = {"name": name, "version": "1", "model": "model.onnx", "targets": ["linux-x86_64"], **fields}
    (folder / "modelpack.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / f"{name}-out"
    code = main(["build", str(folder / "modelpack.yaml"), "--hosts", str(hosts), "--out", str(out), "--no-cache"])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    packages = list(out.glob("*.tar.gz")) if out.exists() else []
    if not packages:
        return code, None, None, text
    unpacked = tmp_path / f"{name}-pkg"
    extract(packages[0], unpacked)
    return code, unpacked, json.loads((unpacked / "manifest.json").read_text()), text


def source_session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def numpy_pipeline(model: Path, manifest: dict, image: np.ndarray) -> dict[str, np.ndarray]:
    """What the package must compute: NumPy pre-processing, the untouched source model,
    NumPy post-processing (the reference implementations, not the fused graph)."""
    functions = manifest["functions"]
    session = source_session(model)
    feeds = apply_pre({functions["pre"][0]["name"]: image}, functions["pre"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    return apply_post(outputs, functions["post"] + functions["runtime"])


def test_classifier_image_in_top5_labels_out(capsys, tmp_path, docker_hosts):
    labels = "\n".join(f"class-{i} ✓" for i in range(10)) + "\n"
    code, package, manifest, text = build(
        capsys, tmp_path, docker_hosts, TINYCNN, "camera",
        files={"labels.txt": labels},
        compilers=["onnxruntime", "openvino"],
        functions={"pre": [{"image": {"size": [67, 91], "channels": "BGR"}}, {"resize": {"size": 40}},
                           {"center_crop": {"size": 32}}, "bgr_to_rgb",
                           {"normalize": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                                          "std": [0.229, 0.224, 0.225]}}],
                   "post": ["softmax", {"topk": {"k": 5, "labels": "labels.txt"}}]},
        select={"benchmark_s": 0.05})
    assert code == 0, text
    signature = {t["name"]: (t["dtype"], t["shape"]) for t in manifest["inputs"] + manifest["outputs"]}
    assert signature == {"image": ("uint8", [67, 91, 3]), "scores": ("float32", [5]),
                         "indices": ("int64", [5]), "labels": ("string", [5])}
    assert manifest["functions"]["check"]["passed"] and manifest["functions"]["applied_by"] == "graph"
    assert (package / "labels.txt").read_text(encoding="utf-8") == labels
    session = load(package)
    rng = np.random.default_rng(11)
    for image in [rng.integers(0, 256, (67, 91, 3), dtype=np.uint8), np.zeros((67, 91, 3), np.uint8)]:
        got = session.run({"image": image})
        want = numpy_pipeline(TINYCNN, manifest, image)
        assert got["indices"].tolist() == want["indices"].tolist()
        assert got["labels"].tolist() == want["labels"].tolist() == [f"class-{i} ✓" for i in want["indices"]]
        np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
    image_file = tmp_path / "photo.npy"
    np.save(image_file, rng.integers(0, 256, (67, 91, 3), dtype=np.uint8))
    result = tmp_path / "result.npz"
    assert main(["run", str(next((tmp_path / "camera-out").glob("*.tar.gz"))), "--input", f"image={image_file}",
                 "--output", str(result)]) == 0
    printed = capsys.readouterr().out
    with np.load(result, allow_pickle=False) as saved:
        named = saved["labels"].tolist()
    assert named == numpy_pipeline(TINYCNN, manifest, np.load(image_file))["labels"].tolist()
    assert f"labels: string[5] = {named}" in printed


def test_detector_with_nms_matches_the_numpy_reference(capsys, tmp_path, docker_hosts):
    model = pypi_model("yolov8n")  # [1, 3, 320, 320] -> [1, 22, 2100]: 18 classes
    code, package, manifest, text = build(
        capsys, tmp_path, docker_hosts, model, "detector",
        compilers=["onnxruntime", "openvino", "ncnn"],
        functions={"pre": [{"image": {"size": [240, 320]}}, {"resize": {"size": [320, 320]}},
                           {"normalize": {"scale": 1 / 255}}],
                   "post": [{"detections": {"format": "yolov8", "iou": 0.5, "score": 0.004,
                                            "max_detections": 25}}]},
        select={"benchmark_s": 0.1})
    assert code == 0, text
    shapes = {t["name"]: t["shape"] for t in manifest["outputs"]}
    assert shapes == {"boxes": ["detections", 4], "scores": ["detections"], "classes": ["detections"]}
    rows = {c["id"]: c for c in manifest["candidates"]}
    assert all("functions" in c for c in rows.values())
    session = load(package)
    images = (smooth_images([1, 3, 240, 320], 3, seed=5) * 80 + 90).clip(0, 255).astype(np.uint8)
    found = 0
    for image in images[:, 0].transpose(0, 2, 3, 1):
        got = session.run({"image": np.ascontiguousarray(image)})
        want = numpy_pipeline(model, manifest, image)
        assert got["classes"].tolist() == want["classes"].tolist()
        np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4)
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=0.05)
        assert len(want["scores"]) <= 25
        found += len(want["scores"])
    assert found > 0, "the images must produce detections for the comparison to mean anything"


METRIC = '''
import numpy as np


def mean_confidence(outputs, inputs):
    """Mean over images of the best class score of any anchor (a detector's confidence)."""
    return float(np.mean([o["output0"][0, 4:].max() for o in outputs]))
'''


def test_int8_static_wins_where_it_passes_the_gate(capsys, tmp_path, docker_hosts):
    model = pypi_model("yolov8n")
    images = smooth_images([1, 3, 320, 320], 40, seed=2)  # half calibrates, half (20) judges
    code, _, manifest, text = build(
        capsys, tmp_path, docker_hosts, model, "quantised",
        files={"calibration.npz": {"images": images}, "metric.py": METRIC},
        compilers=["onnxruntime"], calibration="calibration.npz", shapes={"images": [1, 3, {"min": 320, "max": 320}, {"min": 320, "max": 320}]},
        accelerate={"variants": ["int8-static"], "gate": {"metric": "metric.py:mean_confidence", "max_drop": 0.05}},
        select={"benchmark_s": 0.5})
    assert code == 0, text
    rows = {c["id"]: c for c in manifest["candidates"]}
    int8 = rows["onnxruntime+int8-static"]
    assert int8["status"] == "selected", int8
    assert int8["task_gate"]["passed"] and int8["task_gate"]["samples"] == 20
    assert manifest["acceleration"]["evaluation"]["calibration"] == 20
    gate = int8["task_gate"]
    assert gate["drop"] <= 0.05 and gate["drop"] == pytest.approx(gate["baseline"] - gate["value"], abs=1e-5)
    assert int8["versus_baseline"]["baseline"] == "onnxruntime" and int8["versus_baseline"]["speedup"] > 1
    assert int8["versus_baseline"]["size_ratio"] < 0.5
    assert any("initializers" in p or "quantisation pre-processing" in p for p in int8["preparation"])
    assert manifest["compiler"]["variant"] == "int8-static"
    assert "selected variant" in manifest["samples"]["reference_engine"]
    assert manifest["selftest"]["passed"]


def test_fp16_is_rejected_where_it_breaks_accuracy(capsys, tmp_path, docker_hosts):
    model = pypi_model("yolov8n")
    code, _, manifest, text = build(
        capsys, tmp_path, docker_hosts, model, "halfprecision",
        files={"sample.npz": {"images": smooth_images([1, 3, 320, 320], 1, seed=3)[0]}},
        samples="sample.npz", compilers=["onnxruntime"], accelerate=["fp16"],
        tolerance={"atol": 0.01, "rtol": 0.001}, select={"benchmark_s": 0.1})
    assert code == 0, text
    rows = {c["id"]: c for c in manifest["candidates"]}
    fp16 = rows["onnxruntime+fp16"]
    assert fp16["status"] == "rejected", fp16
    worst = max(o["max_abs"] for o in fp16["accuracy"]["outputs"].values())
    assert worst > 0.01 and "max abs error" in fp16["reason"]
    assert rows["onnxruntime"]["status"] == "selected"
    assert manifest["compiler"]["variant"] is None
