"""The release engineer's view: report.html from a real build, opened in real headless
Chromium, plus the CI matrix export."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from tests.models import REPO, TINYCNN

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def built(capsys, tmp_path: Path, docker_client) -> tuple[Path, dict]:
    """A real two-model build on Docker: one measured selection, one package failure."""
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("hosts:\n  - {name: dock, transport: docker, targets: [linux-x86_64], slots: 2}\n")
    specs = []
    for name, model, compilers in (("good", TINYCNN, ["onnxruntime", "openvino"]), ("bad", None, ["onnxruntime"])):
        folder = tmp_path / name
        folder.mkdir()
        if model is None:  # a custom op no engine has: a package failure with a reason
            from onnx import TensorProto, helper, save

            graph = helper.make_graph([helper.make_node("Nope", ["x"], ["y"], domain="com.example")], "g",
                                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
            save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                         helper.make_opsetid("com.example", 1)]),
                 str(folder / "m.onnx"))
        else:
            shutil.copyfile(model, folder / "m.onnx")
        (folder / "modelpack.yaml").write_text(yaml.safe_dump(
            {"name": name, "version": "1", "model": "m.onnx", "targets": ["linux-x86_64"],
             "compilers": compilers, "select": {"benchmark_s": 0.1}}))
        specs.append(str(folder / "modelpack.yaml"))
    out = tmp_path / "dist"
    assert main(["build", *specs, "--hosts", str(hosts), "--out", str(out)]) == 1
    capsys.readouterr()
    return out, json.loads((out / "summary.json").read_text())


def test_report_in_headless_chromium_shows_grid_charts_and_regressions(built, tmp_path):
    from playwright.sync_api import sync_playwright

    out, summary = built
    assert (out / "report.html").is_file()
    previous = copy.deepcopy(summary)
    for job in previous["jobs"]:
        if job["name"] == "good":
            job["latency_ms"] = job["latency_ms"] / 2  # so this run looks 2x slower
        else:
            job.update(status="built", failure=None, reason=None)  # so "bad" is newly failing
    (tmp_path / "previous.json").write_text(json.dumps(previous))
    report = tmp_path / "compared.html"
    assert main(["report", str(out / "summary.json"), "--compare", str(tmp_path / "previous.json"),
                 "--out", str(report)]) == 0
    html = report.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "<script" not in html, "self-contained"

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("file:") else route.continue_())
        page.goto(report.as_uri())
        cells = page.locator("#matrix td.cell")
        assert cells.count() == 2
        statuses = sorted(cells.nth(i).get_attribute("data-status") for i in range(2))
        assert statuses == ["built", "failed-package"]
        assert page.locator("#matrix td.regression").count() == 2
        assert page.locator("#job-good-linux-x86-64 .chart svg").count() == 1
        ids = page.locator("#job-good-linux-x86-64 .chart svg [id^='candidate-']").evaluate_all(
            "els => els.map(e => e.id)")
        assert {i.split("_")[0] for i in ids} == {"candidate-onnxruntime", "candidate-openvino"}
        kinds = sorted(page.locator("#regressions li.regression").evaluate_all("els => els.map(e => e.dataset.kind)"))
        assert kinds == ["failing", "latency"]
        assert page.locator("#job-bad-linux-x86-64").inner_text().count("Nope") >= 1
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_package_card_renders_the_manifest(built, capsys):
    out, summary = built
    [package] = out.glob("good-*.tar.gz")
    assert main(["inspect", str(package), "--html"]) == 0
    html = capsys.readouterr().out
    for needle in ("<table id=\"signature\"", "image", "float32", "id=\"engines\"", "openvino",
                   "id=\"provenance\"", "id=\"checksums\"", "model/"):
        assert needle in html
