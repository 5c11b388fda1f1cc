"""The packager on its own, as a build host runs it: refusals and failure classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator.packager.job import CompilerCall, Job, JobTarget
from orchestrator.runtime.checks import sha256_file
from tests.models import REPO, TINYCNN, make_tinycnn


def run_packager(tmp_path: Path, **overrides) -> tuple[int, dict]:
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    (inp / "model.onnx").write_bytes(TINYCNN.read_bytes())
    fields = dict(name="t", version="1", target=JobTarget("linux-x86_64", "linux", "x86_64", "linux", "x86_64"),
                  model="model.onnx", model_sha256=sha256_file(TINYCNN), compilers=[CompilerCall("onnxruntime")],
                  atol=1e-4, rtol=1e-3)
    fields.update(overrides)
    (inp / "job.json").write_text(Job(**fields).to_json())
    proc = subprocess.run([sys.executable, "-m", "orchestrator.packager", "build", str(inp / "job.json"),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    return proc.returncode, json.loads((tmp_path / "out" / "result.json").read_text())


def test_refuses_a_target_of_another_platform(tmp_path):
    code, result = run_packager(
        tmp_path, target=JobTarget("windows-x86_64", "windows", "x86_64", "windows", "x86_64"))
    assert code == 2 and result["status"] == "bad-job"
    assert "must be built on windows/x86_64, but this host is linux/x86_64" in result["error"]


def test_refuses_a_model_corrupted_in_transfer(tmp_path):
    code, result = run_packager(tmp_path, model_sha256="0" * 64)
    assert code == 2 and "transfer was corrupted" in result["error"]


def test_refuses_external_data_missing_or_corrupted_in_transfer(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "weights.bin").write_bytes(b"what arrived")
    code, result = run_packager(tmp_path, model_data={"weights.bin": "0" * 64})
    assert code == 2 and "external data 'weights.bin': sha256 differs" in result["error"], result
    code, result = run_packager(tmp_path, model_data={"gone.bin": "0" * 64})
    assert code == 2 and "external data 'gone.bin' is not in the job's input folder" in result["error"], result
    code, result = run_packager(tmp_path, model_data={"../job.json": "0" * 64})
    assert code == 2 and "outside the model's folder" in result["error"], result


def test_compiler_option_error_is_a_bad_job(tmp_path):
    code, result = run_packager(tmp_path, compilers=[CompilerCall("onnxruntime", {"optimization": "ludicrous"})])
    assert code == 2 and "optimization must be one of" in result["error"]


def test_success_reports_package_checksum_and_stage_timings(tmp_path):
    code, result = run_packager(tmp_path)
    assert code == 0 and result["status"] == "ok"
    archive = tmp_path / "out" / result["package"]
    assert sha256_file(archive) == result["sha256"] and archive.stat().st_size == result["size"]
    assert set(result["timings"]) == {"platform", "reference", "normalise", "compile", "select", "selftest", "archive"}


def test_bundled_example_is_what_its_generator_makes():
    import onnx

    assert make_tinycnn().SerializeToString() == onnx.load(str(TINYCNN)).SerializeToString()


def test_image_tag_follows_its_inputs(tmp_path, monkeypatch):
    import shutil

    from orchestrator import images

    copy = tmp_path / "images"
    shutil.copytree(images.IMAGES_DIR, copy)
    monkeypatch.setattr(images, "IMAGES_DIR", copy)
    name = "linux-x86_64"
    before = images.image_tag(name)
    assert images.image_tag(name) == before, "same inputs, same tag"
    requirements = copy / name / "requirements.txt"
    requirements.write_text(requirements.read_text() + "# touched\n")
    assert images.image_tag(name) != before


def test_measurements_under_emulation_are_flagged(tmp_path):
    code, result = run_packager(tmp_path, compilers=[CompilerCall("onnxruntime"), CompilerCall("openvino")],
                                provenance={"host": "qemu-box", "emulated": True}, select={"benchmark_s": 0.05})
    assert code == 0, result
    import tarfile

    with tarfile.open(tmp_path / "out" / result["package"]) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest["selection"]["emulated"] is True and "emulation" in manifest["selection"]["note"]
    assert all(row["emulated"] is True for row in manifest["candidates"] if "latency_ms" in row)
    assert len([row for row in manifest["candidates"] if "latency_ms" in row]) == 2


def _numpy_value_error() -> None:
    np = __import__("numpy")
    np.zeros(3) + np.zeros(4)  # raises ValueError: operands could not be broadcast together


def _json_value_error() -> None:
    json.loads("{not json")


import pytest  # noqa: E402


@pytest.mark.parametrize("stray", [_numpy_value_error, _json_value_error], ids=["numpy", "json"])
def test_a_stray_value_error_is_a_package_failure_not_a_bad_job(tmp_path, monkeypatch, stray):
    """A ValueError from NumPy or JSON inside the packager is a bug or a model problem,
    not a job that does not match its host: reporting it as a bad job made the controller
    count it as an infrastructure failure and disable a healthy host (#17)."""
    from orchestrator.packager import __main__ as entry

    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "job.json").write_text(Job(name="t", version="1", target=JobTarget("linux-x86_64", "linux", "x86_64",
                                                                                  "linux", "x86_64"),
                                      model="model.onnx", model_sha256="0" * 64, compilers=[], atol=1e-4,
                                      rtol=1e-3).to_json())

    def build(*args, **kwargs):
        stray()

    monkeypatch.setattr(entry, "build", build)
    code = entry.main(["build", str(inp / "job.json"), "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (code, result["status"]) == (1, "failed")
    assert "packager crashed" in result["error"]


def test_an_unreadable_job_file_is_a_bad_job(tmp_path):
    """What the controller sent is broken: that is the host's or the link's business."""
    from orchestrator.packager import __main__ as entry

    (tmp_path / "job.json").write_text('{"schema_version": 1, "name": "t"')
    code = entry.main(["build", str(tmp_path / "job.json"), "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (code, result["status"]) == (2, "bad-job")
    assert "job.json" in result["error"]


def test_the_controller_blames_the_host_only_when_the_packager_did_not_blame_the_model():
    """Exit 1 with a result saying so is the model's failure (not retried); a refused
    job, a result that disagrees with the exit code, or no readable result is the host's."""
    from orchestrator.execute import AttemptStatus, classify
    from orchestrator.packager.job import Outcome, Result

    failed = Result.from_json(Result(Outcome.FAILED, error="no candidate passed").to_json())
    refused = Result.from_json(Result(Outcome.BAD_JOB, error="wrong platform").to_json())
    assert classify(1, failed) is AttemptStatus.PACKAGE
    assert classify(2, refused) is AttemptStatus.INFRASTRUCTURE
    assert classify(-9, failed) is AttemptStatus.INFRASTRUCTURE  # killed after writing: not a verdict
    assert classify(1, None) is AttemptStatus.INFRASTRUCTURE
    with pytest.raises(ValueError):
        Result.from_json('{"status": "ok", "package": "m.tar.gz"}')  # success without a checksum


def test_worker_messages_refuse_a_stale_or_foreign_shape():
    """The request and the result that cross the worker process boundary are checked
    where they are read: a key one side no longer sends is named, not a KeyError later."""
    from orchestrator.packager.messages import MeasureRequest, MessageError, WorkerResult

    request = MeasureRequest("root", {"path": "m.onnx"}, [], {"atol": 1e-4, "rtol": 1e-3})
    assert MeasureRequest.from_json(request.to_json()) == request
    stale = json.loads(request.to_json())
    del stale["sizes"]
    stale["inputs"] = {}
    with pytest.raises(MessageError, match=r"unknown keys \['inputs'\]"):
        MeasureRequest.from_json(json.dumps(stale))
    with pytest.raises(MessageError, match="not a worker-result message"):
        WorkerResult.from_json(request.to_json())


def test_integer_inputs_are_sampled_over_the_values_the_graph_encodes():
    # a byte input one-hot encoded by comparison (as TensorFlow and JAX export one_hot),
    # broadcast first; a class index into OneHot; a flag compared with a sparse table
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from orchestrator.packager.samples import input_hints, random_inputs

    table = numpy_helper.from_array(np.arange(257, dtype=np.int32).reshape(1, 1, 257), "table")
    shape = numpy_helper.from_array(np.array([1, 64, 257]), "shape")
    depth = numpy_helper.from_array(np.array(12, np.int64), "depth")
    onoff = numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "onoff")
    sparse = numpy_helper.from_array(np.array([[0, 5, 7]], np.int64), "sparse")
    nodes = [helper.make_node("Unsqueeze", ["bytes", "axis"], ["b3"]),
             helper.make_node("Expand", ["b3", "shape"], ["wide"]),
             helper.make_node("Equal", ["wide", "table"], ["hot"]),
             helper.make_node("OneHot", ["label", "depth", "onoff"], ["label_hot"]),
             helper.make_node("Equal", ["flag", "sparse"], ["flag_hit"])]
    axis = numpy_helper.from_array(np.array([2]), "axis")
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, [1, 64]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [1, 64]),
         helper.make_tensor_value_info("flag", TensorProto.INT64, [1, 64])],
        [helper.make_tensor_value_info("hot", TensorProto.BOOL, None),
         helper.make_tensor_value_info("label_hot", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("flag_hit", TensorProto.BOOL, None)],
        [table, shape, depth, onoff, sparse, axis])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inputs = [{"name": "bytes", "dtype": "int32"}, {"name": "label", "dtype": "int64"},
              {"name": "flag", "dtype": "int64"}]
    feeds, how = random_inputs(inputs, {i["name"]: [1, 64] for i in inputs}, 7, input_hints(model))
    assert feeds["bytes"].min() >= 0 and feeds["bytes"].max() <= 256 and len(np.unique(feeds["bytes"])) > 40
    assert "[0, 257)" in how["bytes"] and "257 classes" in how["bytes"], how
    assert set(np.unique(feeds["label"])) == set(range(12)) and "depth 12" in how["label"], how
    # a comparison with a few scattered constants says nothing about the values' range
    assert how["flag"] == "integers uniform in [0, 10)", how


def test_the_tensors_behind_an_empty_output_are_the_float_ones_its_data_dependent_op_decides_from():
    # NonZero(Greater(scores, 0.9)) reads a mask: the gate must read the scores above it;
    # an output empty for another reason has nothing to tap and is said to be unchecked
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from orchestrator.packager.data_dependent import dense_sources, empty_everywhere, with_taps
    from orchestrator.runtime.functions import tap_name

    nodes = [helper.make_node("Sigmoid", ["x"], ["scores"]),
             helper.make_node("Greater", ["scores", "threshold"], ["hit"]),
             helper.make_node("NonZero", ["hit"], ["where"]),
             helper.make_node("Slice", ["x", "zero", "zero", "one"], ["nothing"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("where", TensorProto.INT64, [2, None]),
         helper.make_tensor_value_info("nothing", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(np.array(0.9, np.float32), "threshold"),
         numpy_helper.from_array(np.array([0]), "zero"), numpy_helper.from_array(np.array([1]), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    references = [{"where": np.zeros((2, 0), np.int64), "nothing": np.zeros((0, 8), np.float32)},
                  {"where": np.zeros((2, 3), np.int64), "nothing": np.zeros((0, 8), np.float32)}]
    assert empty_everywhere(references, ["where", "nothing"]) == ["nothing"]
    found = dense_sources(model, ["where", "nothing"])
    assert found.taps == {"scores": tap_name("scores")}
    assert "NonZero" in found.record["where"] and "['scores']" in found.record["where"]
    assert "no gate checked its values" in found.record["nothing"]

    import onnxruntime as ort

    tapped = with_taps(model, found)
    x = np.linspace(-4, 4, 16, dtype=np.float32).reshape(2, 8)
    session = ort.InferenceSession(tapped.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    produced = dict(zip(names, session.run(None, {"x": x})))
    np.testing.assert_allclose(produced[tap_name("scores")], 1 / (1 + np.exp(-x)), rtol=1e-5)
