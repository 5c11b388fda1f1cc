"""Task-level gates for acceleration variants, through the real packager (local transport):
top-1 agreement over the calibration samples, and what a variant accepted that way ships."""

from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np

from orchestrator.cli import main
from orchestrator.runtime import load
from orchestrator.runtime.archive import extract
from tests.models import make_grid_detector, make_linear_classifier, save


def test_top1_agreement_gate_and_a_forced_variant_ships_its_own_golden_outputs(capsys, write_spec, local_hosts,
                                                                               tmp_path):
    spec = write_spec(compilers=["onnxruntime"], calibration="calibration.npz",
                      accelerate={"variants": ["fp16"], "gate": {"top1_agreement": 0.9}},
                      select={"engine": "onnxruntime+fp16", "benchmark_s": 0.05})
    samples = np.random.default_rng(1).standard_normal((80, 1, 3, 32, 32)).astype(np.float32)
    np.savez(spec.parent / "calibration.npz", image=samples)
    out = tmp_path / "out"
    code = main(["build", str(spec), "--hosts", str(local_hosts), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    [package] = out.glob("*.tar.gz")
    with tarfile.open(package) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    rows = {c["id"]: c for c in manifest["candidates"]}
    fp16, fp32 = rows["onnxruntime+fp16"], rows["onnxruntime"]
    assert fp16["status"] == "selected" and fp16["variant"] == "fp16"
    gate = fp16["task_gate"]
    assert gate["counted"] == "40 of 40 samples" and gate["criterion"] == "top1_agreement >= 0.9"
    assert gate["tensor"] == "probs" and gate["value"] == 1.0 and gate["passed"]
    assert fp32.get("task_gate") is None, "fp32 compilers stay under the tolerance"
    assert fp16["versus_baseline"]["baseline"] == "onnxruntime"
    assert manifest["acceleration"]["gate"] == {"top1_agreement": 0.9}
    assert "selected variant onnxruntime+fp16" in manifest["samples"]["reference_engine"]
    extract(package, tmp_path / "pkg")
    assert load(tmp_path / "pkg").self_test().passed


def test_calibration_must_match_the_package_inputs(capsys, write_spec, local_hosts, tmp_path):
    spec = write_spec(calibration="calibration.npz", accelerate=["int8-static"])
    np.savez(spec.parent / "calibration.npz", image=np.zeros((4, 3, 32, 32), np.float32))  # no sample axis
    assert main(["build", str(spec), "--hosts", str(local_hosts), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "calibration" in err and "[samples, *['batch', 3, 32, 32]]" in err
    assert not (tmp_path / "o").exists()


def build(capsys, spec, hosts, out):
    code = main(["build", str(spec), "--hosts", str(hosts), "--out", str(out), "--quiet", "--no-cache"])
    captured = capsys.readouterr()
    manifest = None
    for package in out.glob("*.tar.gz") if out.exists() else []:
        with tarfile.open(package) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
    return code, manifest, captured.out + captured.err


def gated_build(capsys, write_spec, hosts, tmp_path, model, variant: str, gate: dict, data: str = "calibration",
                post: list | None = None, **shape: tuple) -> tuple[np.ndarray, dict, dict]:
    """Build ``model`` with one variant under ``gate``, on seeded random ``data`` samples
    (one input, its name and shape given as a keyword); returns the samples, the
    manifest and the variant's row."""
    (name, dims), = shape.items()
    samples = np.random.default_rng(len(dims) + dims[0]).standard_normal(dims).astype(np.float32)
    spec = write_spec(model=model, name="gated", compilers=["onnxruntime"], **{data: f"{data}.npz"},
                      functions={"post": post or ["softmax", {"topk": {"k": 3}}]},
                      accelerate={"variants": [variant], "gate": gate}, select={"benchmark_s": 0.05})
    np.savez(spec.parent / f"{data}.npz", **{name: samples})
    code, manifest, text = build(capsys, spec, hosts, tmp_path / "out")
    assert code == 0, text
    return samples, manifest, next(c for c in manifest["candidates"] if c.get("variant") == variant)


def test_a_fused_top_k_cannot_hide_an_int8_variant_that_flips_the_top_1(capsys, write_spec, local_hosts, tmp_path):
    # The reported case: softmax + top-k fused, an int8 variant, a top-1 gate. The gate
    # used to read the first output, top-k's sorted scores, whose arg-max is always 0.
    model = save(make_linear_classifier(spread=0.01), tmp_path / "classifier.onnx")
    _, manifest, int8 = gated_build(capsys, write_spec, local_hosts, tmp_path, model, "int8-dynamic",
                                    {"top1_agreement": 0.9}, pixels=(48, 1, 3, 8, 8))
    assert int8["status"] == "rejected", int8
    gate = int8["task_gate"]
    assert gate["tensor"] == "modelpack_fn/raw_logits", "the model's own logits, not the fused top-k"
    assert gate["value"] < 0.8 and not gate["passed"] and gate["counted"].endswith("of 24 samples")
    assert "modelpack_fn/raw_logits" in int8["reason"] and "24 samples" in int8["reason"]
    held = int8["held_out"]
    assert held["samples"] == 24 and held["outputs"]["logits"]["top1_agreement"] == gate["value"]
    assert "top5_overlap" in held["outputs"]["logits"] and held["packaged_top1"]["tensor"] == "indices[0]"
    assert manifest["selection"]["selected"] == "onnxruntime"
    assert manifest["acceleration"]["gate_reads"]["model"] == {"logits": "modelpack_fn/raw_logits"}
    assert [o["name"] for o in manifest["outputs"]] == ["scores", "indices"], "taps are not package outputs"


def _digest(sample: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(sample):
        array = np.ascontiguousarray(sample[name])
        digest.update(name.encode() + str(array.dtype).encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()[:16]


def test_a_variant_that_agrees_passes_on_held_out_samples_never_calibrated_on(capsys, write_spec, local_hosts,
                                                                              tmp_path):
    model = save(make_linear_classifier(spread=1.0), tmp_path / "classifier.onnx")
    pixels, manifest, int8 = gated_build(capsys, write_spec, local_hosts, tmp_path, model, "int8-static",
                                         {"top1_agreement": 0.9}, pixels=(120, 1, 3, 8, 8))
    assert int8["status"] in ("selected", "passed") and int8["task_gate"]["passed"], int8
    assert int8["task_gate"]["interval_95"][0] >= 0.9, "passes only when the interval clears the limit"
    split = manifest["acceleration"]["evaluation"]
    assert split["source"].endswith("split") and split["calibration"] == 60 and split["held_out"] == 60
    held, calibrated = set(split["held_out_digests"]), set(split["calibration_digests"])
    assert not held & calibrated, "no sample both calibrates and judges"
    assert held | calibrated == {_digest({"pixels": p}) for p in pixels}, "the split covers the file exactly"
    assert int8["held_out"]["samples"] == 60


def test_box_recall_rejects_an_int8_detector_that_drops_boxes(capsys, write_spec, local_hosts, tmp_path):
    model = save(make_grid_detector(anchor=100.0), tmp_path / "detector.onnx")
    _, manifest, int8 = gated_build(capsys, write_spec, local_hosts, tmp_path, model, "int8-dynamic",
                                    {"box_recall": 0.9}, image=(30, 1, 3, 16, 16), data="evaluation",
                                    post=[{"detections": {"format": "yolov8"}}])
    assert int8["status"] == "rejected", int8
    gate = int8["task_gate"]
    assert gate["criterion"] == "box_recall@0.5 >= 0.9" and gate["tensor"] == "boxes, classes"
    found, total = (int(n) for n in gate["counted"].split(" fp32 boxes")[0].split(" of "))
    assert total > 30 and abs(found / total - gate["value"]) < 1e-6 and gate["value"] < 0.9
    assert int8["held_out"]["box_recall"]["value"] == gate["value"]
    assert manifest["acceleration"]["evaluation"]["source"] == "the spec's evaluation file"


def test_the_tolerance_must_hold_on_held_out_samples_not_only_on_the_golden_one(capsys, write_spec, local_hosts,
                                                                                tmp_path):
    # an all-zero golden sample quantises exactly: judged on it alone, int8 would pass
    model = save(make_linear_classifier(spread=1.0), tmp_path / "classifier.onnx")
    spec = write_spec(model=model, name="tolerance", compilers=["onnxruntime"], samples="golden.npy",
                      evaluation="evaluation.npz", accelerate={"variants": ["int8-dynamic"]},
                      select={"benchmark_s": 0.05})
    np.save(spec.parent / "golden.npy", np.zeros((1, 3, 8, 8), np.float32))
    np.savez(spec.parent / "evaluation.npz",
             pixels=np.random.default_rng(8).standard_normal((20, 1, 3, 8, 8)).astype(np.float32))
    code, manifest, text = build(capsys, spec, local_hosts, tmp_path / "out")
    assert code == 0, text
    int8 = next(c for c in manifest["candidates"] if c.get("variant") == "int8-dynamic")
    assert all(o["passed"] for o in int8["accuracy"]["outputs"].values()), "exact on the golden sample"
    assert int8["status"] == "rejected", int8
    assert "held-out samples" in int8["reason"] and int8["accuracy"]["held_out"]["failing"] > 0
    assert int8["held_out"]["outputs"]["logits"]["max_abs"] > 1e-4


def test_static_int8_recipes_calibrate_differently_in_bounded_chunks_and_compete_under_the_gate(
        capsys, write_spec, local_hosts, tmp_path):
    """MinMax, entropy, percentile and symmetric calibration each give their own
    activation ranges (read from the quantised graphs), consume the samples in chunks,
    and are candidates under the task gate, each with its reason in the manifest."""
    import onnx
    from onnx import numpy_helper

    from orchestrator.packager.accelerate import transform
    from tests.models import TINYCNN

    model = TINYCNN
    rng = np.random.default_rng(3)
    samples = rng.standard_normal((40, 1, 3, 32, 32)).astype(np.float32)
    samples[0] *= 25  # one outlier sample: the methods that clip it must differ from MinMax
    np.savez(tmp_path / "calibration.npz", image=samples)
    recipes = ["int8-static", "int8-static-entropy", "int8-static-percentile", "int8-static-symmetric"]
    scales, zero_points = {}, {}
    for recipe in recipes:
        notes = transform(recipe, model, tmp_path / f"{recipe}.onnx", tmp_path / "calibration.npz")
        assert any("calibrated on 40 samples in chunks of 16" in n for n in notes), notes
        graph = onnx.load(str(tmp_path / f"{recipe}.onnx")).graph
        init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        quantisers = {n.input[0]: n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in init}
        scales[recipe] = {name: float(init[n.input[1]]) for name, n in quantisers.items()}
        zero_points[recipe] = int(init[quantisers["image"].input[2]])
    assert len({tuple(sorted(s.items())) for s in scales.values()}) == 4, f"each recipe has its own ranges: {scales}"
    assert scales["int8-static-percentile"]["image"] < scales["int8-static"]["image"], "the percentile clips"
    assert zero_points["int8-static-symmetric"] == 128 and zero_points["int8-static"] != 128

    spec = write_spec(compilers=["onnxruntime"], calibration="calibration.npz",
                      accelerate={"variants": recipes, "gate": {"top1_agreement": 0.9}}, select={"benchmark_s": 0.05})
    np.savez(spec.parent / "calibration.npz", image=samples)
    code, manifest, output = build(capsys, spec, local_hosts, tmp_path / "out")
    assert code == 0, output
    rows = {c["id"]: c for c in manifest["candidates"]}
    for recipe in recipes:
        row = rows[f"onnxruntime+{recipe}"]
        assert row["status"] in ("selected", "passed", "rejected"), row
        assert row["task_gate"]["criterion"] == "top1_agreement >= 0.9" and row["reason"], row


def test_a_model_with_a_0d_input_calibrates_and_is_gated_from_a_calibration_set(capsys, write_spec, local_hosts,
                                                                                 tmp_path):
    """A scalar input (a temperature, a sample rate) is stacked into a 1-d array in the
    calibration .npz; each sample must reach the engines as a 0-d array, not as a
    NumPy scalar, which onnxruntime refuses ("Unable to handle object of type")."""
    from tests.models import make_encoder

    model = save(make_encoder(), tmp_path / "encoder.onnx")
    spec = write_spec(model=model, name="encoder", calibration="calibration.npz",
                      shapes={"input_ids:0": [1, 16]}, accelerate={"variants": ["int8-static"]})
    rng = np.random.default_rng(3)
    np.savez(spec.parent / "calibration.npz", **{
        "input_ids:0": rng.integers(0, 64, (20, 1, 16)).astype(np.int64),
        "attention/mask": np.ones((20, 1, 16), bool),
        "temperature": rng.uniform(0.5, 2.0, 20).astype(np.float32)})
    out = tmp_path / "out"
    code = main(["build", str(spec), "--hosts", str(local_hosts), "--out", str(out), "--quiet",
                 "--json", str(tmp_path / "summary.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    [package] = out.glob("*.tar.gz")
    with tarfile.open(package) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    variant = {c["id"]: c for c in manifest["candidates"]}["onnxruntime+int8-static"]
    assert variant["status"] in ("selected", "passed", "rejected"), variant
    assert variant["held_out"]["samples"] > 0, "calibrated, then judged on the held-out samples"
    assert "Unable to handle" not in json.dumps(manifest)


def test_histogram_calibration_takes_a_model_whose_tensors_the_data_sizes(tmp_path):
    """A detector with its NMS in the graph: tensors after the NMS hold as many rows as
    each sample has detections. Entropy and percentile calibration stacked a chunk's
    values of each tensor into one array and failed on every such model ("inhomogeneous
    shape"), which left a YOLOv8 with modelpack's fused NMS no histogram-calibrated int8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from orchestrator.packager.accelerate import transform

    rng = np.random.default_rng(7)
    weights = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Flatten", ["h"], ["flat"], axis=0),
             helper.make_node("Squeeze", ["flat", "zero"], ["row"]),
             helper.make_node("Greater", ["row", "cut"], ["keep"]),
             helper.make_node("NonZero", ["keep"], ["where"]),
             helper.make_node("Squeeze", ["where", "zero"], ["index"]),
             helper.make_node("Gather", ["row", "index"], ["kept"]),  # [K]: K decided by the data
             helper.make_node("Mul", ["kept", "kept"], ["squares"]),
             helper.make_node("ReduceSum", ["squares"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "varying", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              [weights, numpy_helper.from_array(np.array([0], np.int64), "zero"),
                               numpy_helper.from_array(np.array(0.0, np.float32), "cut")])
    model = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "varying.onnx")
    onnx.checker.check_model(str(model))
    samples = rng.standard_normal((40, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "calibration.npz", x=samples)
    kept_sizes = {int((s @ numpy_helper.to_array(weights) > 0).sum()) for s in samples}
    assert len(kept_sizes) > 1, "the samples keep different numbers of values"
    for recipe in ("int8-static-entropy", "int8-static-percentile"):
        notes = transform(recipe, model, tmp_path / f"{recipe}.onnx", tmp_path / "calibration.npz")
        assert any("in chunks of 1 (the data sizes the tensors of its NonZero)" in n for n in notes), notes
        quantised = onnx.load(str(tmp_path / f"{recipe}.onnx"))
        assert any(n.op_type == "QuantizeLinear" for n in quantised.graph.node), "it was quantised"
