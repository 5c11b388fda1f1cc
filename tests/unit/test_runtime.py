"""The runtime that ships in every package: accuracy gate semantics and load-time checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from orchestrator.runtime import PackageError, load
from orchestrator.runtime.archive import extract
from orchestrator.runtime.checks import compare_outputs, engine_version_problem


def test_gate_uses_allclose_semantics_per_output():
    ref = {"a": np.array([1.0, 100.0], np.float32), "b": np.array([0.0], np.float32)}
    # a: |1.001-1| = 1e-3 <= 1e-4 + 1e-3*1 ; |100.05-100| = 0.05 <= 1e-4 + 0.1  -> pass
    # b: |2e-4 - 0| = 2e-4 > 1e-4 + 0                                      -> fail
    got = {"a": np.array([1.001, 100.05], np.float32), "b": np.array([2e-4], np.float32)}
    result = compare_outputs(got, ref, atol=1e-4, rtol=1e-3)
    by_name = {o.name: o for o in result.outputs}
    assert by_name["a"].passed and not by_name["b"].passed and not result.passed
    assert by_name["b"].max_abs == pytest.approx(2e-4, rel=1e-3)
    assert by_name["a"].max_abs == pytest.approx(0.05, rel=1e-3)
    assert "output 'b'" in result.summary()


def test_gate_fails_on_nan_shape_and_missing_outputs_and_exact_ints():
    ref = {"x": np.array([1.0, 2.0]), "y": np.zeros((2, 2)), "z": np.zeros(1), "i": np.array([3, 4])}
    got = {"x": np.array([1.0, np.nan]), "y": np.zeros((4,)), "i": np.array([3, 5])}
    result = compare_outputs(got, ref, atol=1.0, rtol=1.0)
    assert [o.passed for o in result.outputs] == [False, False, False, False]
    assert {o.name: o.max_abs for o in result.outputs}["i"] == 1.0
    both_nan = compare_outputs({"x": np.array([np.nan])}, {"x": np.array([np.nan])}, 0.0, 0.0)
    assert both_nan.passed


def test_engine_version_rule():
    assert engine_version_problem("onnxruntime", "1.32.0", "1.32.1") is None
    assert engine_version_problem("onnxruntime", "1.32.0", "1.33.0") is None
    assert "built with 1.32.0" in engine_version_problem("onnxruntime", "1.32.0", "1.31.1")
    assert "built with 1.32.0" in engine_version_problem("onnxruntime", "1.32.0", "2.0.0")
    assert "not installed" in engine_version_problem("onnxruntime", "1.32.0", None)


@pytest.fixture
def unpacked(capsys, write_spec, local_hosts, tmp_path) -> Path:
    from orchestrator.cli import main

    assert main(["build", str(write_spec()), "--out", str(tmp_path / "d"), "--hosts", str(local_hosts)]) == 0
    capsys.readouterr()
    dest = tmp_path / "pkg"
    dest.mkdir()
    extract(tmp_path / "d" / "tinycnn-1.0.0-linux-x86_64.tar.gz", dest)
    return dest


def _edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_load_runs_self_test_and_validates_feeds(unpacked):
    session = load(unpacked)
    assert session.self_test().passed
    assert [t.name for t in session.inputs] == ["image"]
    with pytest.raises(PackageError, match="missing \\['image'\\]"):
        session.run({"img": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(PackageError, match="dtype float64"):
        session.run({"image": np.zeros((1, 3, 32, 32))})
    with pytest.raises(PackageError, match="shape \\[1, 3, 31, 32\\]"):
        session.run({"image": np.zeros((1, 3, 31, 32), np.float32)})
    assert session.run({"image": np.zeros((1, 3, 32, 32), np.float32)})["probs"].shape == (1, 10)
    batch = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
    together = session.run({"image": batch})["probs"]  # the model's dynamic batch is kept
    one_by_one = np.concatenate([session.run({"image": batch[i:i + 1]})["probs"] for i in range(4)])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)
    with pytest.raises(PackageError, match="rank 3"):
        session.run({"image": np.zeros((3, 32, 32), np.float32)})


def test_load_refuses_another_platform(unpacked):
    _edit_manifest(unpacked, lambda m: m["target"].update(
        name="windows-x86_64", os="windows", build_os="windows"))
    with pytest.raises(PackageError, match="needs windows/x86_64 but this machine is linux/x86_64"):
        load(unpacked)


def test_load_refuses_a_newer_engine_build(unpacked):
    _edit_manifest(unpacked, lambda m: m["engines"]["onnxruntime"].update(version="1.99.0"))
    with pytest.raises(PackageError, match="built with 1.99.0"):
        load(unpacked)


def test_load_refuses_modified_or_extra_files(unpacked):
    shutil.copyfile(unpacked / "model" / "model.ort", unpacked / "model" / "extra.bin")
    with pytest.raises(PackageError, match="extra.bin: present but not listed"):
        load(unpacked)


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_manifest_paths_that_leave_the_package_are_refused(unpacked, tmp_path, where):
    # a hostile manifest pointing at a model (or samples) no checksum covers
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((unpacked / "model" / "model.onnx").read_bytes())
    path = str(outside) if where == "absolute" else "../outside.onnx"
    _edit_manifest(unpacked, lambda m: m["artifacts"][0].update(path=path))
    with pytest.raises(PackageError, match="outside the package"):
        load(unpacked)


def test_sample_paths_that_leave_the_package_are_refused(unpacked, tmp_path):
    np.save(tmp_path / "outside.npy", np.zeros((1, 3, 32, 32), np.float32))
    _edit_manifest(unpacked, lambda m: m["samples"]["inputs"].update(image="../outside.npy"))
    with pytest.raises(PackageError, match="outside the package"):
        load(unpacked).self_test()
