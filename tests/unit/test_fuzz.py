"""Fuzzing what users and hosts hand modelpack: specs, hosts files, package manifests
and `run` inputs. Whatever arrives, the answer is an exit code (0, 1 or 2) and at most
one line of error, never a traceback."""

from __future__ import annotations

import io
import json
import shutil
import string
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from tests.models import TINYCNN

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: the keys the parsers know, so that fuzzed documents reach past the first check
SPEC_KEYS = ["name", "version", "model", "targets", "compilers", "samples", "shapes", "tolerance", "select",
             "functions", "accelerate", "calibration", "evaluation", "features", "zip", "fixed_shapes"]
HOST_KEYS = ["name", "transport", "targets", "slots", "speed", "address", "user", "port", "docker_host",
             "host_key", "shell", "memory_gb", "insecure", "enabled", "features", "workdir"]
MANIFEST_KEYS = ["schema_version", "name", "version", "target", "source", "inputs", "outputs", "artifacts",
                 "engines", "candidates", "selftest", "samples", "tolerance", "shapes"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["linux-x86_64", "onnxruntime", "tinycnn.onnx", "../x", "/etc/passwd", "$\\x{$",
                                     "docker", "ssh", "local", "1.0.0", "image", "batch"]))


def values(keys: list[str]) -> st.SearchStrategy[Any]:
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(keys), st.text(string.ascii_letters, max_size=8)), inner,
                        max_size=5)), max_leaves=12)


def documents(keys: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(values(keys), st.dictionaries(st.sampled_from(keys), values(keys), max_size=len(keys)))


def outcome(capsys, argv: list[str], allowed: tuple[int, ...]) -> tuple[int, str]:
    """Run the CLI; its exit code and stderr. A traceback is an exception escaping
    main(), which fails the test by itself."""
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse's one-line errors
        code = int(exited.code or 0)
    err = capsys.readouterr().err
    assert code in allowed, (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    return code, err


@FUZZ
@given(document=documents(SPEC_KEYS))
def test_any_spec_document_is_planned_or_refused_in_one_line(capsys, tmp_path_factory, document):
    folder = tmp_path_factory.mktemp("spec")
    shutil.copyfile(TINYCNN, folder / "tinycnn.onnx")
    (folder / "modelpack.yaml").write_text(yaml.safe_dump(document, allow_unicode=True))
    outcome(capsys, ["matrix", str(folder / "modelpack.yaml")], (0, 2))


@FUZZ
@given(text=st.text(max_size=200))
def test_any_spec_text_is_planned_or_refused_in_one_line(capsys, tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("spec")
    (folder / "modelpack.yaml").write_text(text)
    outcome(capsys, ["matrix", str(folder / "modelpack.yaml")], (0, 2))


@FUZZ
@given(document=st.one_of(documents(HOST_KEYS), st.fixed_dictionaries({"hosts": st.lists(documents(HOST_KEYS),
                                                                                          max_size=3)})))
def test_any_hosts_file_is_listed_or_refused_in_one_line(capsys, tmp_path_factory, document):
    path = tmp_path_factory.mktemp("hosts") / "hosts.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    outcome(capsys, ["hosts", "list", "--hosts", str(path)], (0, 2))


@FUZZ
@given(key=st.sampled_from(MANIFEST_KEYS), value=values(MANIFEST_KEYS), path=st.integers(0, 3))
def test_any_manifest_is_inspected_or_refused_in_one_line(capsys, tmp_path_factory, tinycnn_package, key, value, path):
    """One section of a real manifest replaced by anything (at the top, or one level
    down), with the file table kept true so the parser itself is what is tested."""
    from orchestrator.packager.package import write_archive
    from orchestrator.runtime.archive import extract

    folder = tmp_path_factory.mktemp("unpacked")
    extract(tinycnn_package, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    section = manifest.get(key)
    if path and isinstance(section, dict) and section:
        section[sorted(section)[path % len(section)]] = value
    elif path and isinstance(section, list) and section:
        section[path % len(section)] = value
    else:
        manifest[key] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    hostile = folder.parent / f"{folder.name}.tar.gz"
    write_archive(folder, hostile)
    for command in (["inspect"], ["inspect", "--html"], ["inspect", "--json"]):
        outcome(capsys, [*command, str(hostile)], (0, 2))


dtypes = st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "float16", "complex64", "<U3"])


@FUZZ
@given(dtype=dtypes, shape=st.lists(st.integers(0, 40), max_size=5), name=st.sampled_from(["image", "img", ""]),
       raw=st.one_of(st.none(), st.binary(max_size=300)))
def test_any_run_input_runs_or_is_refused_in_one_line(capsys, tmp_path_factory, tinycnn_package, dtype, shape, name, raw):
    folder = tmp_path_factory.mktemp("run")
    feed = folder / "x.npy"
    if raw is None:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(shape, dtype))
        feed.write_bytes(buffer.getvalue())
    else:
        feed.write_bytes(raw)
    outcome(capsys, ["run", str(tinycnn_package), "--input", f"{name}={feed}", "--output", str(folder / "o.npz")], (0, 1, 2))
