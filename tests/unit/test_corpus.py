"""The conformance corpus's fast subset (the smallest model of each kind), built with
every compiler as scripts/bench-corpus does: each packages with at least onnxruntime,
runs from its package at every checked size (two at least for a dynamic model) equal
to onnxruntime on the source model, and every candidate that did not pass says why in
one line."""

from __future__ import annotations

import pytest

from tests.corpus import build_and_check, subset

COMPILERS = ["onnxruntime", "openvino", "mnn", "ncnn"]


@pytest.mark.parametrize("model", subset(), ids=lambda m: m.key)
def test_corpus_model_packages_and_runs_from_its_package(model, tmp_path):
    result = build_and_check(model, COMPILERS, tmp_path, benchmark_s=0.05)
    assert result.manifest is not None, f"{model.key}: {result.failure}"
    rows = {c["id"]: c for c in result.manifest["candidates"]}
    assert rows["onnxruntime"]["status"] in ("selected", "passed"), rows["onnxruntime"]["reason"]
    for row in rows.values():
        if row["status"] not in ("selected", "passed"):
            assert row["reason"] and "\n" not in row["reason"] and len(row["reason"]) < 600, row
            assert "Traceback" not in row["reason"] and "onnxruntime_src" not in row["reason"], row["reason"]
    assert not result.mismatches, result.mismatches
    dynamic = any(i.get("range") for i in result.manifest["inputs"])
    assert set(result.ran) == set(result.manifest["shapes"]["checked"])
    if dynamic:
        assert len(result.ran) >= 2, "a dynamic model runs from its package at two sizes at least"
    ranged = [d for i in model.spec.get("shapes", {}).values() for d in i if isinstance(d, dict)]
    if ranged:
        assert {"min", "max"} <= set(result.ran), result.ran
