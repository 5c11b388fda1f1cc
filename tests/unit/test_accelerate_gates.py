"""Task-level gates for acceleration variants, through the real packager (local transport):
top-1 agreement over the calibration samples, and what a variant accepted that way ships."""

from __future__ import annotations

import json
import tarfile

import numpy as np

from orchestrator.cli import main
from orchestrator.runtime import load
from orchestrator.runtime.archive import extract


def test_top1_agreement_gate_and_a_forced_variant_ships_its_own_golden_outputs(capsys, write_spec, local_hosts,
                                                                               tmp_path):
    spec = write_spec(compilers=["onnxruntime"], calibration="calibration.npz",
                      accelerate={"variants": ["fp16"], "gate": {"top1_agreement": 0.99}},
                      select={"engine": "onnxruntime+fp16", "benchmark_s": 0.05})
    samples = np.random.default_rng(1).standard_normal((8, 1, 3, 32, 32)).astype(np.float32)
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
    assert gate["samples"] == 8 and gate["criterion"] == "top1_agreement >= 0.99 on output 'probs'"
    assert gate["value"] == 1.0 and gate["passed"]
    assert fp32.get("task_gate") is None, "fp32 compilers stay under the tolerance"
    assert fp16["versus_baseline"]["baseline"] == "onnxruntime"
    assert manifest["acceleration"]["gate"] == {"top1_agreement": 0.99}
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
