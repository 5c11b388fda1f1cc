"""An engine whose converter cannot hold the fused functions: the spec's fallback decides
whether the runtime applies them in NumPy or the candidate is dropped (local transport,
real onnxruntime and ncnn; ncnn has no TopK)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from orchestrator.cli import main
from orchestrator.runtime import load
from orchestrator.runtime.archive import extract
from tests.models import pypi_model
from tests.unit.test_real_models import build

FUNCTIONS = {"pre": [{"image": {"size": [32, 32]}}, {"normalize": {"scale": 0.02, "mean": 2.5}}],
             "post": ["softmax", {"topk": {"k": 3}}]}


@pytest.mark.parametrize("fallback", ["runtime", "drop"])
def test_fallback_runtime_or_drop(capsys, write_spec, local_hosts, tmp_path, fallback):
    spec = write_spec(compilers=["onnxruntime", "ncnn"], functions={**FUNCTIONS, "fallback": fallback},
                      select={"engine": "ncnn"} if fallback == "runtime" else {"benchmark_s": 0.05})
    out = tmp_path / "out"
    code = main(["build", str(spec), "--hosts", str(local_hosts), "--out", str(out), "--quiet"])
    capsys.readouterr()
    assert code == 0
    [package] = out.glob("*.tar.gz")
    with tarfile.open(package) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    rows = {c["id"]: c for c in manifest["candidates"]}
    assert rows["ncnn"]["status"] in ("failed", "crashed") and rows["ncnn"]["functions"] == "graph"
    if fallback == "drop":
        assert "ncnn (functions in runtime)" not in rows
        assert manifest["functions"]["applied_by"] == "graph"
        return
    retried = rows["ncnn (functions in runtime)"]
    assert retried["status"] == "selected" and retried["functions"] == "runtime"
    assert manifest["functions"]["applied_by"] == "runtime"
    assert manifest["artifacts"][0]["runtime"]["functions"]["post"][0]["op"] == "softmax"
    # the package takes the image and gives top-k, with NumPy doing what ncnn could not
    extract(package, tmp_path / "pkg")
    session = load(tmp_path / "pkg")
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    got = session.run({"image": image})
    assert got["indices"].shape == (3,) and got["scores"].dtype == np.float32
    assert np.all(np.diff(got["scores"]) <= 0) and 0 < got["scores"].sum() <= 1.0 + 1e-6


def test_a_detector_whose_fused_nms_finds_nothing_falls_back_gated_on_what_it_decides_from(
        capsys, write_spec, local_hosts, tmp_path):
    """YOLOv8 with the detections step fused, at a score no random sample reaches: the
    gates read the boxes and scores inside the fused step instead of its empty outputs.
    ncnn cannot hold that step (pnnx.Expression) and falls back to the runtime applying
    it, where those tensors do not exist: it is gated on the model's own output the step
    reads, which decides them, and passes (it was rejected: "output ... missing"). MNN
    holds the fused step, but shaped its empty results wrongly (boxes [0, 2100, 4] for
    [0, 4]) and was rejected for that."""
    fixed = {"min": 320, "max": 320}
    spec = write_spec(model=pypi_model("yolov8n"), compilers=["ncnn", "mnn"],
                      shapes={"images": [{"min": 1, "max": 1}, 3, fixed, fixed]},
                      functions={"post": [{"detections": {"format": "yolov8", "score": 0.95}}], "fallback": "runtime"},
                      select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    assert set(manifest["samples"]["empty_outputs"]) == {"boxes", "scores", "classes"}
    rows = {c["id"]: c for c in manifest["candidates"]}
    assert rows["ncnn"]["functions"] == "graph" and rows["ncnn"]["status"] in ("failed", "crashed")
    retried = rows["ncnn (functions in runtime)"]
    assert retried["status"] in ("selected", "passed"), retried
    checked = retried["accuracy"]["outputs"]
    assert checked["modelpack_fn/raw_output0"]["passed"], "the model's own output decides the empty ones"
    mnn = rows["mnn"]
    assert mnn["functions"] == "graph" and mnn["status"] in ("selected", "passed"), mnn.get("reason")
    assert mnn["accuracy"]["outputs"]["boxes"]["passed"]
    assert sum(n.startswith("modelpack_fn/raw_modelpack_fn/") for n in mnn["accuracy"]["outputs"]) >= 2, \
        "MNN, running the fused step, is gated on the boxes and scores inside it"
