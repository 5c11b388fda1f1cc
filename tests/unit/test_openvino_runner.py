"""The OpenVINO runner's own call path (runtime/engines.py), on real OpenVINO, against
onnxruntime on the same model: it feeds OpenVINO from buffers it keeps between calls,
so what is checked here is what reusing memory could break."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from orchestrator.runtime.engines import OnnxRuntimeRunner, OpenVinoRunner

pytest.importorskip("openvino")


def _save(tmp_path: Path, nodes: list, inputs: list, outputs: list, initializers: list = ()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """y = where(mask, x * k, 0) with a 0-d int64 k and a bool mask, and n = the number of
    true elements in the mask (NonZero: empty where the mask has none); x is
    [batch, channels, width], every dimension dynamic."""
    return _save(tmp_path, [
        helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "kf"], ["scaled"]),
        helper.make_node("Where", ["mask", "scaled", "zero"], ["y"]),
        helper.make_node("NonZero", ["mask"], ["where_true"]),
    ], [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "c", "w"]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["n", "c", "w"]),
        helper.make_tensor_value_info("k", TensorProto.INT64, []),
    ], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "w"]),
        helper.make_tensor_value_info("where_true", TensorProto.INT64, [3, "t"]),
    ], [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])


@pytest.fixture(params=["native", "wrapper"])
def runner_of(request: pytest.FixtureRequest):
    """The runner as it runs (OpenVINO's native call), and as it runs on an OpenVINO
    without one (the Python wrapper's ``infer``)."""

    def make(path: Path) -> OpenVinoRunner:
        runner = OpenVinoRunner(path, {})
        if request.param == "wrapper":
            runner._infer = runner._request.infer
        return runner

    return make


def _feeds(rng: np.random.Generator, shape: tuple[int, ...], k: int, density: float = 0.5) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal(shape).astype(np.float32), "mask": rng.random(shape) < density,
            "k": np.array(k, np.int64)}


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) >= set(want)
    for name, value in want.items():
        assert got[name].shape == value.shape and got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_every_call_at_a_new_size_is_computed_from_its_own_feeds(mixed: Path, runner_of) -> None:
    """Sizes change from call to call and come back: each result is the model's on that
    call's feeds (a buffer kept at the old size, or not refilled, would show here)."""
    runner, reference = runner_of(mixed), OnnxRuntimeRunner(mixed, {"optimization": "disabled"})
    rng = np.random.default_rng(3)
    for shape, k in [((1, 2, 8), 3), ((3, 2, 5), -2), ((1, 2, 8), 7), ((1, 2, 8), 7), ((2, 4, 1), 0)]:
        feeds = _feeds(rng, shape, k)
        _same(runner.run(feeds), reference.run(feeds))


def test_results_stay_the_callers_after_the_next_call(mixed: Path, runner_of) -> None:
    """OpenVINO writes every call's outputs into the same memory: a result handed out
    must not change when the runner is called again, nor when the caller's feeds do."""
    runner = runner_of(mixed)
    rng = np.random.default_rng(5)
    first_feeds = _feeds(rng, (2, 3, 4), 2)
    first = runner.run(first_feeds)
    kept = {name: value.copy() for name, value in first.items()}
    first_feeds["x"][...] = 99.0
    runner.run(_feeds(rng, (2, 3, 4), -5))
    _same(first, kept)
    again = runner.run(_feeds(rng, (2, 3, 4), 4))
    assert not np.shares_memory(again["y"], first["y"])


def test_an_output_the_data_leaves_empty_is_returned_empty(mixed: Path, runner_of) -> None:
    runner, reference = runner_of(mixed), OnnxRuntimeRunner(mixed, {"optimization": "disabled"})
    feeds = _feeds(np.random.default_rng(7), (1, 2, 3), 1, density=0.0)
    got = runner.run(feeds)
    assert got["where_true"].shape == (3, 0)
    _same(got, reference.run(feeds))


def test_a_feed_of_another_kind_is_refused_not_reinterpreted(mixed: Path) -> None:
    """The buffer has the model's type; a feed that would need an unsafe cast (floats
    into the int64 input) is refused rather than truncated."""
    runner = OpenVinoRunner(mixed, {})
    feeds = _feeds(np.random.default_rng(9), (1, 2, 3), 1)
    with pytest.raises(TypeError):
        runner.run({**feeds, "k": np.array(1.5)})
