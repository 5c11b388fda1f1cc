"""The runtime that ships in every package: accuracy gate semantics and load-time checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from orchestrator.runtime import PackageError, load
from orchestrator.runtime.archive import extract
from orchestrator.runtime.checks import Tolerance, compare_outputs, engine_version_problem


def test_gate_uses_allclose_semantics_per_output():
    ref = {"a": np.array([1.0, 100.0], np.float32), "b": np.array([0.0], np.float32)}
    # a: |1.001-1| = 1e-3 <= 1e-4 + 1e-3*1 ; |100.05-100| = 0.05 <= 1e-4 + 0.1  -> pass
    # b: |2e-4 - 0| = 2e-4 > 1e-4 + 0                                      -> fail
    got = {"a": np.array([1.001, 100.05], np.float32), "b": np.array([2e-4], np.float32)}
    result = compare_outputs(got, ref, Tolerance(1e-4, 1e-3))
    by_name = {o.name: o for o in result.outputs}
    assert by_name["a"].passed and not by_name["b"].passed and not result.passed
    assert by_name["b"].max_abs == pytest.approx(2e-4, rel=1e-3)
    assert by_name["a"].max_abs == pytest.approx(0.05, rel=1e-3)
    assert "output 'b'" in result.summary()


def test_an_output_with_a_gate_of_its_own_is_held_to_it_and_the_others_to_the_default():
    from orchestrator.runtime.functions import tap_name

    ref = {"boxes": np.array([100.0, 200.0]), "scores": np.array([0.5, 0.9]), tap_name("scores"): np.array([0.5])}
    got = {"boxes": np.array([100.4, 199.7]), "scores": np.array([0.8, 0.9]), tap_name("scores"): np.array([0.8])}
    gate = Tolerance(1e-3, 0.0, {"boxes": (0.5, 0.0)})
    result = {o.name: o for o in compare_outputs(got, ref, gate).outputs}
    assert result["boxes"].passed and (result["boxes"].atol, result["boxes"].rtol) == (0.5, 0.0)
    assert not result["scores"].passed and result["scores"].atol == 1e-3
    assert not result[tap_name("scores")].passed, "a tap is held to its output's gate"
    assert "output 'scores'" in compare_outputs(got, ref, gate).summary() and "atol=0.001" in \
        compare_outputs(got, ref, gate).summary()
    # one pair for both lets the wrong scores through: the reason each output has its own
    assert compare_outputs(got, ref, Tolerance(0.5, 0.0)).passed
    assert Tolerance.from_json({**gate.to_json(), "basis": "why"}) == gate


def test_gate_fails_on_nan_shape_and_missing_outputs_and_exact_ints():
    ref = {"x": np.array([1.0, 2.0]), "y": np.zeros((2, 2)), "z": np.zeros(1), "i": np.array([3, 4])}
    got = {"x": np.array([1.0, np.nan]), "y": np.zeros((4,)), "i": np.array([3, 5])}
    result = compare_outputs(got, ref, Tolerance(1.0, 1.0))
    assert [o.passed for o in result.outputs] == [False, False, False, False]
    assert {o.name: o.max_abs for o in result.outputs}["i"] == 1.0
    both_nan = compare_outputs({"x": np.array([np.nan])}, {"x": np.array([np.nan])}, Tolerance(0.0, 0.0))
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


def _plant_bytecode(unpacked: Path, module: str, payload: str) -> Path:
    """An unchecked hash-based .pyc for one of the runtime's modules: Python runs it
    without looking at the source, which is what a hostile package would ship."""
    import importlib.util
    import py_compile

    folder = unpacked / "runtime" / "modelpack_runtime"
    fake = unpacked.parent / f"{module}.py"
    fake.write_text(payload)
    planted = Path(importlib.util.cache_from_source(str(folder / f"{module}.py")))
    planted.parent.mkdir(exist_ok=True)
    py_compile.compile(str(fake), cfile=str(planted), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    return planted


def test_planted_bytecode_is_refused_by_every_check(unpacked, capsys, tmp_path):
    from orchestrator.cli import main
    from orchestrator.packager.package import write_archive

    _plant_bytecode(unpacked, "checks", "raise SystemExit('planted code ran')")
    with pytest.raises(PackageError, match="__pycache__/checks.*present but not listed"):
        load(unpacked)
    hostile = tmp_path / "tinycnn-1.0.0-linux-x86_64.tar.gz"
    write_archive(unpacked, hostile)
    for command in ("inspect", "verify"):
        assert main([command, str(hostile)]) == 2
        assert "__pycache__/checks" in capsys.readouterr().err


def test_the_shipped_runtime_never_reads_or_writes_bytecode_in_the_package(unpacked, tmp_path):
    """Imported the documented way on a device, the package's own runtime compiles its
    modules from the checked sources: a planted .pyc does not run, and importing leaves
    nothing behind that would fail the next check."""
    import subprocess
    import sys

    marker = tmp_path / "ran"
    planted = _plant_bytecode(unpacked, "checks", f"open({str(marker)!r}, 'w').close()")
    script = (f"import sys; sys.path.insert(0, {str(unpacked / 'runtime')!r}); import modelpack_runtime;"
              " print(modelpack_runtime.checks.__file__)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "the planted bytecode ran"
    planted.unlink()
    done = subprocess.run([sys.executable, "-c", script + "; print(modelpack_runtime.load(sys.argv[1]).self_test().passed)",
                           str(unpacked)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split()[-1] == "True", done.stderr
    assert not list((unpacked / "runtime").rglob("*.pyc")), "importing wrote bytecode into the package"


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino", "mnn", "ncnn"])
def test_load_sets_the_thread_count_of_every_engine(tmp_path, capsys, write_spec, local_hosts, engine):
    """``load(pkg, threads=N)`` reaches each engine's own setting (read back from the
    engine), so a device runs with the threads it was measured with."""
    from orchestrator.cli import main

    spec = write_spec(compilers=[engine])
    assert main(["build", str(spec), "--out", str(tmp_path / "d"), "--hosts", str(local_hosts), "--no-cache"]) == 0
    capsys.readouterr()
    folder = tmp_path / "pkg"
    extract(tmp_path / "d" / "tinycnn-1.0.0-linux-x86_64.tar.gz", folder)
    read_back = {
        "onnxruntime": lambda r: r._session.get_session_options().intra_op_num_threads,
        "openvino": lambda r: int(r._compiled.get_property("INFERENCE_NUM_THREADS")),
        "ncnn": lambda r: r._net.opt.num_threads,
        "mnn": lambda r: r.threads,
    }[engine]
    for threads in (1, 2):  # OpenVINO caps the count at the cores this machine has
        session = load(folder, threads=threads)
        assert session.artifact["engine"] == engine
        assert read_back(getattr(session._runner, "_runner", session._runner)) == threads
        assert session.self_test().passed


DEVICE_SETTINGS = {
    # engine: (its settings in the spec, what the engine reports back once loaded)
    "onnxruntime": ({"execution_mode": "parallel"},
                    lambda r: (r._session.get_session_options().intra_op_num_threads,
                               str(r._session.get_session_options().execution_mode))),
    "openvino": ({"performance_hint": "THROUGHPUT", "streams": 2},
                 lambda r: (int(r._compiled.get_property("INFERENCE_NUM_THREADS")),
                            str(r._compiled.get_property("PERFORMANCE_HINT")),
                            int(r._compiled.get_property("NUM_STREAMS")))),
    "ncnn": ({"light_mode": False, "packing": False},
             lambda r: (r._net.opt.num_threads, r._net.opt.lightmode, r._net.opt.use_packing_layout)),
    "mnn": ({"precision": "high"}, lambda r: (r.threads, r.precision)),
}
EXPECTED_BACK = {
    "onnxruntime": (2, "ExecutionMode.ORT_PARALLEL"),
    "openvino": (2, "THROUGHPUT", 2),
    "ncnn": (2, False, False),
    "mnn": (2, "high"),
}


@pytest.mark.parametrize("engine", sorted(DEVICE_SETTINGS))
def test_the_devices_threads_and_engine_settings_are_measured_with_shipped_and_applied(
        tmp_path, capsys, write_spec, local_hosts, engine):
    """`device: {threads, engines}` in the spec: every candidate is measured with them,
    the package records them in its artifacts, and the runtime applies them on load,
    read back from the engine itself (each default differs: 0 or all cores, MNN 1)."""
    from orchestrator.cli import main

    settings, read_back = DEVICE_SETTINGS[engine]
    spec = write_spec(compilers=[engine], device={"threads": 2, "engines": {engine: settings}})
    assert main(["build", str(spec), "--out", str(tmp_path / "d"), "--hosts", str(local_hosts), "--no-cache"]) == 0
    capsys.readouterr()
    folder = tmp_path / "pkg"
    extract(tmp_path / "d" / "tinycnn-1.0.0-linux-x86_64.tar.gz", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    primary = next(a for a in manifest["artifacts"] if a["role"] == "primary")
    assert {k: primary["runtime"].get(k) for k in ("threads", *settings)} == {"threads": 2, **settings}
    session = load(folder)
    assert read_back(getattr(session._runner, "_runner", session._runner)) == EXPECTED_BACK[engine]
    assert session.self_test().passed
    # the caller's count still wins over the recorded one
    override = load(folder, threads=1)
    assert read_back(getattr(override._runner, "_runner", override._runner))[0] == 1


def test_dynamic_dimensions_are_held_to_their_range_and_agree_across_inputs(unpacked):
    # the checks a device relies on before the engine sees a feed: a size outside the
    # range the package was built and tested for, and one named dimension given two sizes
    def edit(manifest):
        image = manifest["inputs"][0]
        image["shape"][0], image["range"] = "batch", [[1, 2], None, None, None]
        manifest["inputs"].append({"name": "mask", "dtype": "float32", "shape": ["batch"]})
    _edit_manifest(unpacked, edit)
    session = load(unpacked)
    image = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(PackageError, match=r"input 'image' has size 3 in dimension 0 \(batch\), the package accepts 1\.\.2"):
        session.run({"image": np.zeros((3, 3, 32, 32), np.float32), "mask": np.zeros(3, np.float32)})
    with pytest.raises(Exception) as engine:  # the signature passes; the model itself has no 'mask'
        session.run({"image": image, "mask": np.zeros(2, np.float32)})
    assert not isinstance(engine.value, PackageError), engine.value
    # shapes that passed once let through nothing but those same shapes
    with pytest.raises(PackageError, match=r"input 'mask' has size 1 in dimension 0 \(batch\), but batch is 2"):
        session.run({"image": image, "mask": np.zeros(1, np.float32)})
    with pytest.raises(PackageError, match=r"input 'mask' has dtype float64"):
        session.run({"image": image, "mask": [0.0, 0.0]})  # a list is taken as the array it makes
    with pytest.raises(PackageError, match=r"missing \['mask'\], unexpected \[\]"):
        session.run({"image": image})
