"""Windows and iOS packages, exercised as far as Linux allows.

The packager refuses to build for an OS other than its host's, so these tests fake the
one thing Linux cannot be, the platform library's answer to "which machine is this?",
at its module boundary. Everything else is real: the worker processes, onnxruntime,
OpenVINO, the self-test, the archive. What only a real Windows or macOS host can show
(the CoreML execution provider, Core ML prediction, xcrun, Windows paths and process
trees) is listed in the README."""

from __future__ import annotations

import json
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest

from orchestrator.packager.build import build
from orchestrator.packager.compilers import CompileContext, CompilerError
from orchestrator.packager.compilers.coreml import CoreMlCompiler, CoreMlOptions
from orchestrator.packager.job import CompilerCall, Job, JobTarget
from orchestrator.runtime.checks import sha256_file
from orchestrator.targets import TARGETS
from tests.models import TINYCNN


def pretend(monkeypatch, machine: tuple[str, str]) -> None:
    monkeypatch.setattr("orchestrator.packager.environment.this_machine", lambda: machine)
    monkeypatch.setattr("orchestrator.runtime.checks.this_machine", lambda: machine)


def packager_job(target: str, compilers: list[CompilerCall]) -> Job:
    t = TARGETS[target]
    return Job(name="tiny", version="1", target=JobTarget(t.name, t.os, t.arch, t.build_os, t.build_arch),
               model="model.onnx", model_sha256=sha256_file(TINYCNN), compilers=compilers, atol=1e-4, rtol=1e-3)


def build_for(tmp_path: Path, job: Job) -> dict:
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "model.onnx").write_bytes(TINYCNN.read_bytes())
    result = build(job, inp, tmp_path / "out", lambda stage: None)
    with tarfile.open(tmp_path / "out" / result["package"]) as tar:
        return {"manifest": json.load(tar.extractfile("manifest.json")), "names": tar.getnames()}


def test_ios_package_ships_the_ort_model_with_the_coreml_provider_and_says_no_device_ran_it(tmp_path, monkeypatch):
    pretend(monkeypatch, ("macos", "aarch64"))
    built = build_for(tmp_path, packager_job("ios-arm64", [CompilerCall("onnxruntime"), CompilerCall("coreml")]))
    manifest, names = built["manifest"], built["names"]
    assert {"model/model.ort", "model/required_operators.config", "model/mobile_usability.txt"} <= set(names)
    ort = next(a for a in manifest["artifacts"] if a["path"] == "model/model.ort")
    assert ort["runtime"]["execution_providers"][0][0] == "CoreMLExecutionProvider"
    ios = manifest["ios"]
    assert ios["device_tested"] is False and ios["execution_providers"][0][0] == "CoreMLExecutionProvider"
    # Linux's onnxruntime has no CoreML provider: the self-test says it ran on the CPU one
    assert ios["providers_in_self_test"] == ["CPUExecutionProvider"]
    coreml = ios["core_ml"]["coreml"]
    assert coreml["status"] == "unavailable" and "needs coremltools, onnx2torch, torch" in coreml["notes"][0]
    assert manifest["selftest"]["passed"] and manifest["selftest"]["on_target_os"] is False
    assert "ios" in manifest["selftest"]["not_checked"][0]


def test_windows_package_measures_onnxruntime_and_openvino_and_self_tests_on_windows_itself(tmp_path, monkeypatch):
    pretend(monkeypatch, ("windows", "x86_64"))
    built = build_for(tmp_path, packager_job("windows-x86_64", [CompilerCall("onnxruntime"), CompilerCall("openvino")]))
    manifest = built["manifest"]
    candidates = {c["compiler"]: c for c in manifest["candidates"]}
    assert set(candidates) == {"onnxruntime", "openvino"}
    assert all(c["status"] in ("selected", "passed") and c["latency_ms"] for c in candidates.values())
    assert manifest["target"]["name"] == "windows-x86_64"
    assert manifest["selftest"]["on_target_os"] is True and "not_checked" not in manifest["selftest"]
    assert all("\\" not in name for name in built["names"]), "archive member names use '/' on every OS"


# -- the Core ML route, with its converters faked at their module boundary -----------------
class FakeSpec:
    def __init__(self, inputs: list[str], outputs: list[str]) -> None:
        self.description = types.SimpleNamespace(input=[types.SimpleNamespace(name=n) for n in inputs],
                                                 output=[types.SimpleNamespace(name=n) for n in outputs])


@pytest.fixture
def converters(monkeypatch):
    """onnx, onnx2torch, torch and coremltools as recording fakes."""
    calls: dict = {}

    class MlModel:
        def save(self, path):
            Path(path).mkdir()
            (Path(path) / "Manifest.json").write_text("{}")
            calls["saved"] = path

        def get_spec(self):
            return FakeSpec(["x_0"], ["probabilities"])

    def convert(traced, **options):
        calls["convert"] = options
        return MlModel()

    ct = types.SimpleNamespace(
        convert=convert, TensorType=lambda **kw: kw,
        target=types.SimpleNamespace(iOS15="iOS15", iOS16="iOS16", iOS17="iOS17", iOS18="iOS18"),
        precision=types.SimpleNamespace(FLOAT32="fp32", FLOAT16="fp16"))
    module = types.SimpleNamespace(eval=lambda: module)
    torch = types.SimpleNamespace(
        float32="f32", int32="i32", float16="f16", uint8="u8",
        zeros=lambda shape, dtype: ("zeros", tuple(shape), dtype),
        no_grad=lambda: __import__("contextlib").nullcontext(),
        jit=types.SimpleNamespace(trace=lambda m, example: calls.setdefault("traced", example)))
    fakes = {"coremltools": ct, "onnx": types.SimpleNamespace(load=lambda path: ("onnx", path)),
             "onnx2torch": types.SimpleNamespace(convert=lambda model: calls.setdefault("onnx2torch", model) and module),
             "torch": torch}
    for name, fake in fakes.items():
        monkeypatch.setitem(sys.modules, name, fake)
    return calls


CONTEXT = CompileContext(inputs=[{"name": "x.0", "dtype": "float32", "shape": [1, 3, 8, 8]}],
                         outputs=[{"name": "probabilities", "dtype": "float32", "shape": [1, 5]}])


def compile_coreml(tmp_path: Path, **options):
    target = JobTarget("ios-arm64", "ios", "aarch64", "macos", "aarch64")
    return CoreMlCompiler().compile(tmp_path / "m.onnx", tmp_path / "pkg", target, CoreMlOptions(**options), CONTEXT)


def fake_xcrun(tmp_path: Path, monkeypatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "xcrun").write_text("#!/bin/sh\n" + script)
    (bin_dir / "xcrun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_coreml_route_converts_with_the_models_names_and_shapes_and_says_when_it_is_uncompiled(
        tmp_path, converters, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-xcode-here"))
    result = compile_coreml(tmp_path, minimum_deployment_target="iOS17", compute_precision="float16")
    options = converters["convert"]
    assert options["inputs"] == [{"name": "x.0", "shape": [1, 3, 8, 8]}] and options["outputs"] == [{"name": "probabilities"}]
    assert options["convert_to"] == "mlprogram" and options["minimum_deployment_target"] == "iOS17"
    assert options["compute_precision"] == "fp16"
    assert converters["traced"] == ("zeros", (1, 3, 8, 8), "f32")
    assert [a.path for a in result.artifacts] == ["model/model.mlpackage"]
    assert result.artifacts[0].runtime == {"inputs": {"x.0": "x_0"}, "outputs": {"probabilities": "probabilities"}}
    assert any(n.startswith("not compiled: xcrun not found") for n in result.notes)
    assert result.reproducible is False


def test_coreml_route_compiles_with_xcrun_when_xcode_is_there(tmp_path, converters, monkeypatch):
    # coremlcompiler compile SRC DEST_DIR writes DEST_DIR/<name>.mlmodelc
    fake_xcrun(tmp_path, monkeypatch, '[ "$1 $2" = "coremlcompiler compile" ] || exit 9\n'
                                      'mkdir -p "$4/model.mlmodelc" && echo compiled > "$4/model.mlmodelc/coremldata.bin"\n')
    result = compile_coreml(tmp_path)
    assert [a.path for a in result.artifacts] == ["model/model.mlpackage", "model/model.mlmodelc"]
    assert "compiled with xcrun coremlcompiler" in result.notes
    assert (tmp_path / "pkg" / "model" / "model.mlmodelc" / "coremldata.bin").is_file()


def test_coreml_route_reports_a_failing_xcrun_instead_of_shipping_a_half_compiled_model(
        tmp_path, converters, monkeypatch):
    fake_xcrun(tmp_path, monkeypatch, 'echo "error: unsupported op" >&2; exit 1\n')
    result = compile_coreml(tmp_path)
    assert [a.path for a in result.artifacts] == ["model/model.mlpackage"]
    assert any("coremlcompiler failed (code 1): error: unsupported op" in n for n in result.notes)


def test_coreml_route_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # import fails
    with pytest.raises(CompilerError, match="onnx2torch, torch and coremltools"):
        compile_coreml(tmp_path)


# -- .zip for Windows -------------------------------------------------------------------
def test_windows_packages_get_a_deterministic_zip_twin_when_asked(tmp_path):
    import yaml

    from orchestrator.collect import staging_dir
    from orchestrator.inventory import Host
    from orchestrator.plan import plan
    from orchestrator.scheduler import Scheduler
    from orchestrator.spec import load_spec
    from tests.stand_in import stand_in
    from tests.simulated import SimulatedTransport

    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "m.onnx").write_bytes(TINYCNN.read_bytes())
    (folder / "modelpack.yaml").write_text(yaml.safe_dump(
        {"name": "m", "version": "1", "model": "m.onnx", "targets": ["windows-x86_64", "linux-x86_64"], "zip": True}))
    jobs = plan([load_spec(folder / "modelpack.yaml")], None, None)
    host = Host(name="sim", transport="local", targets=["windows-x86_64", "linux-x86_64"])
    transport = SimulatedTransport(host, stand_in(lambda job, h: 0.0))
    out = tmp_path / "out"
    records = Scheduler(jobs, {j.id: [host] for j in jobs}, {"sim": transport}, out, staging_dir(out),
                        run_labels={}).run()
    by_target = {r.job.target.name: r for r in records}
    assert by_target["linux-x86_64"].zip is None, "zip is for Windows targets"
    windows = by_target["windows-x86_64"]
    assert windows.status == "built" and windows.zip == out / "m-1.0-windows-x86_64.zip".replace("1.0", "1")
    with tarfile.open(windows.package) as tar, zipfile.ZipFile(windows.zip) as archive:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        assert {i.filename: archive.read(i) for i in archive.infolist()} == files
        assert archive.testzip() is None
    from orchestrator.collect import zip_from_archive

    again = tmp_path / "again.zip"
    zip_from_archive(windows.package, again)
    assert again.read_bytes() == windows.zip.read_bytes(), "the zip is reproducible"
    assert sorted(p.name for p in out.iterdir()) == ["m-1-linux-x86_64.tar.gz", "m-1-windows-x86_64.tar.gz",
                                                     "m-1-windows-x86_64.zip"]


def _windows_run(tmp_path, out, before_publish=None):
    """One Windows job with a .zip twin on a simulated host; ``before_publish(scheduler)``
    runs while the twin is being made, just before the files are published."""
    import yaml

    from orchestrator import scheduler as scheduling
    from orchestrator.collect import staging_dir, zip_from_archive
    from orchestrator.inventory import Host
    from orchestrator.plan import plan
    from orchestrator.spec import load_spec
    from tests.simulated import SimulatedTransport
    from tests.stand_in import stand_in

    folder = tmp_path / "spec"
    folder.mkdir(exist_ok=True)
    (folder / "m.onnx").write_bytes(TINYCNN.read_bytes())
    (folder / "modelpack.yaml").write_text(yaml.safe_dump(
        {"name": "m", "version": "1", "model": "m.onnx", "targets": ["windows-x86_64"], "zip": True}))
    jobs = plan([load_spec(folder / "modelpack.yaml")], None, None)
    host = Host(name="sim", transport="local", targets=["windows-x86_64"])
    transport = SimulatedTransport(host, stand_in(lambda job, h: 0.0))
    runner = scheduling.Scheduler(jobs, {j.id: [host] for j in jobs}, {"sim": transport}, out, staging_dir(out),
                                  run_labels={})

    def twin(archive, dest):
        zip_from_archive(archive, dest)
        if before_publish:
            before_publish(runner)

    original = scheduling.zip_from_archive
    scheduling.zip_from_archive = twin
    try:
        return runner.run()[0]
    finally:
        scheduling.zip_from_archive = original


def test_a_package_and_its_zip_twin_are_published_together_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "m-1-windows-x86_64.zip").write_bytes(b"last night's zip")
    (out / "m-1-windows-x86_64.tar.gz").mkdir()  # the .tar.gz cannot be renamed into place
    (out / "m-1-windows-x86_64.tar.gz" / "x").write_text("blocks the rename")
    record = _windows_run(tmp_path, out)
    assert record.status == "failed" and "could not publish" in record.reason
    assert (out / "m-1-windows-x86_64.zip").read_bytes() == b"last night's zip", "the twin went out alone"
    assert sorted(p.name for p in out.iterdir()) == ["m-1-windows-x86_64.tar.gz", "m-1-windows-x86_64.zip"]


def test_a_cancel_that_lands_just_before_publishing_publishes_nothing(tmp_path):
    out = tmp_path / "out"
    record = _windows_run(tmp_path, out, before_publish=lambda runner: runner.cancel())
    assert record.status == "cancelled"
    assert not out.exists() or not list(out.iterdir())
