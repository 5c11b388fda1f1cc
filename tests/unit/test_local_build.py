"""End to end on this machine through the local transport, with the real packager and
real onnxruntime: build, reproducibility, inspect, run, verify, package failures."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from orchestrator.cli import main
from tests.models import make_two_tower, save


def build(capsys, spec: Path, out: Path, hosts: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["build", str(spec), "--out", str(out), "--hosts", str(hosts), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_build_is_reproducible_and_runs_correctly(capsys, write_spec, local_hosts, tmp_path):
    spec = write_spec()
    code, out, err = build(capsys, spec, tmp_path / "a", local_hosts, "--json", str(tmp_path / "s.json"))
    assert code == 0, out + err
    first = tmp_path / "a" / "tinycnn-1.0.0-linux-x86_64.tar.gz"
    code, _, _ = build(capsys, spec, tmp_path / "b", local_hosts, "--no-cache")
    assert code == 0
    second = tmp_path / "b" / first.name
    assert first.read_bytes() == second.read_bytes(), "same inputs must give a byte-identical package"

    with tarfile.open(first) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert {"model/model.onnx", "model/model.ort", "model/required_operators.config",
            "runtime/modelpack_runtime/__init__.py", "runtime/requirements.txt"} <= set(names)
    assert manifest["selftest"]["passed"] is True
    assert manifest["source"]["sha256"] == hashlib.sha256(
        (spec.parent / "tinycnn.onnx").read_bytes()).hexdigest()
    assert manifest["source"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert manifest["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 32, 32],
                                   "range": [[1, None], None, None, None]}], "the dynamic batch is kept"
    assert manifest["shapes"]["checked"] == {"bench": {"image": [1, 3, 32, 32]}, "probe": {"image": [2, 3, 32, 32]}}
    assert [c["status"] for c in manifest["candidates"]] == ["selected"]
    assert "latency_ms" not in manifest["candidates"][0], "one compiler: nothing to measure, stays reproducible"
    assert set(manifest["files"]) == {n for n in names if n != "manifest.json" and "." in n.split("/")[-1]}

    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["jobs"][0]["status"] == "built"
    assert summary["jobs"][0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()

    image = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    assert main(["run", str(first), "--input", f"image={tmp_path / 'image.npy'}", "--output", str(tmp_path / "o.npz")]) == 0
    got = np.load(tmp_path / "o.npz")["probs"]
    want = reference(spec.parent / "tinycnn.onnx", {"image": image})["probs"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

    assert main(["verify", str(first), "--hosts", str(local_hosts)]) == 0
    assert "self-test passed" in capsys.readouterr().out


def test_awkward_names_dynamic_dims_and_user_samples(capsys, write_spec, local_hosts, tmp_path):
    model = save(make_two_tower(), tmp_path / "two_tower.onnx")
    rng = np.random.default_rng(3)
    feeds = {"token_ids:0": rng.integers(0, 50, (3, 7)).astype(np.int64),
             "features/dense": rng.standard_normal((3, 8)).astype(np.float32)}
    spec = write_spec(model=model, name="two-tower", samples="samples.npz")
    np.savez(spec.parent / "samples.npz", **feeds)
    code, out, err = build(capsys, spec, tmp_path / "dist", local_hosts)
    assert code == 0, out + err
    package = tmp_path / "dist" / "two-tower-1.0.0-linux-x86_64.tar.gz"
    with tarfile.open(package) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        shipped = np.load(io.BytesIO(tar.extractfile(manifest["samples"]["reference"]["scores/sigmoid"]).read()))
    np.testing.assert_allclose(shipped, reference(model, feeds)["scores/sigmoid"], rtol=1e-6)
    assert manifest["samples"]["origin"]["kind"] == "spec"
    assert set(manifest["selftest"]["artifacts"]["model/model.onnx"]["outputs"]) == {
        "scores/sigmoid", "best", "scores/sigmoid @probe", "best @probe"}, "the samples' size, then twice it"

    # random samples instead: the spec gives the dynamic length
    spec = write_spec(model=model, name="two-tower", shapes={"token_ids:0": [2, 5]})
    code, out, err = build(capsys, spec, tmp_path / "dist2", local_hosts)
    assert code == 0, out + err
    with tarfile.open(tmp_path / "dist2" / package.name) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        ids = np.load(io.BytesIO(tar.extractfile(manifest["samples"]["inputs"]["token_ids:0"]).read()))
    assert ids.shape == (2, 5) and ids.dtype == np.int64


def test_model_the_engine_cannot_run_fails_the_job_with_its_reason(capsys, write_spec, local_hosts, tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    out_dir = tmp_path / "dist"
    code, out, err = build(capsys, write_spec(model=path, name="custom"), out_dir, local_hosts)
    assert code == 1
    assert "[package]" in out and "Frobnicate" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["junit.xml", "report.html", "summary.json"]
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["jobs"][0]["failure"] == "package" and "Frobnicate" in summary["jobs"][0]["reason"]


def test_tampered_package_is_refused_by_inspect_run_and_verify(capsys, write_spec, local_hosts, tmp_path):
    code, _, _ = build(capsys, write_spec(), tmp_path / "dist", local_hosts)
    assert code == 0
    package = tmp_path / "dist" / "tinycnn-1.0.0-linux-x86_64.tar.gz"
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(package) as src, tarfile.open(tampered, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name == "samples/reference-0.npy":
                data = data[:-4] + b"\x00\x00\x80\x7f"
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    for command in (["inspect", str(tampered)], ["verify", str(tampered), "--hosts", str(local_hosts)],
                    ["run", str(tampered), "--output", str(tmp_path / "o.npz")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "tampered.tar.gz" in err and "samples/reference-0.npy" in err
    assert not (tmp_path / "o.npz").exists()


def test_user_metric_code_sees_none_of_the_controllers_secrets(capsys, write_spec, local_hosts, tmp_path,
                                                               monkeypatch):
    """The local transport builds on the controller's own machine: the packager, and the
    spec's metric code it runs, get the machine's basics, not the controller's whole
    environment (a pipeline's tokens and keys)."""
    monkeypatch.setenv("RELEASE_SIGNING_TOKEN", "s3cret-value")
    seen = tmp_path / "seen.json"
    spec = write_spec(evaluation="evaluation.npz",
                      accelerate={"variants": ["fp16"], "gate": {"metric": "metric.py:top", "max_drop": 1.0}})
    np.savez(spec.parent / "evaluation.npz",
             image=np.random.default_rng(0).standard_normal((20, 1, 3, 32, 32)).astype(np.float32))
    (spec.parent / "metric.py").write_text(
        "import json, os\n\n\ndef top(outputs, inputs):\n"
        f"    json.dump(dict(os.environ), open({str(seen)!r}, 'w'))\n"
        "    return float(sum(o['probs'].max() for o in outputs))\n")
    code, out, err = build(capsys, spec, tmp_path / "d", local_hosts, "--no-cache")
    assert code == 0, out + err
    environment = json.loads(seen.read_text())
    assert "PATH" in environment and "RELEASE_SIGNING_TOKEN" not in environment
    assert "s3cret-value" not in seen.read_text()
