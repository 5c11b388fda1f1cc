"""Every kind of bad input: one line naming the file and key, exit code 2, and the
output folder left exactly as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.models import TINYCNN


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "dist"
    out.mkdir()
    (out / "keep-me.tar.gz").write_bytes(b"an earlier release")
    return out


def run_build(capsys, spec: Path, out: Path, hosts: Path, *extra: str) -> tuple[int, list[str]]:
    code = main(["build", str(spec), "--out", str(out), "--hosts", str(hosts), *extra])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def assert_rejected(code: int, lines: list[str], out: Path, *needles: str) -> None:
    assert code == 2
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep-me.tar.gz"]
    assert (out / "keep-me.tar.gz").read_bytes() == b"an earlier release"
    assert not list(out.parent.glob(".dist.modelpack-*")), "staging left behind"


def test_missing_model(capsys, write_spec, out_dir, local_hosts):
    spec = write_spec(model=None)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "model", "missing.onnx", "not found")


def test_non_onnx_file(capsys, write_spec, out_dir, local_hosts, tmp_path):
    fake = tmp_path / "notes.onnx"
    fake.write_text("this is a text file, not a protobuf\n" * 20)
    spec = write_spec(model=fake)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "model", "notes.onnx", "not a valid ONNX model")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_onnx(capsys, write_spec, out_dir, local_hosts, tmp_path, fraction):
    data = TINYCNN.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * fraction)])
    spec = write_spec(model=cut)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "model", "cut.onnx")


def test_unknown_target(capsys, write_spec, out_dir, local_hosts):
    spec = write_spec(targets=["linux-x86_64", "linux-riscv64"])
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "targets", "linux-riscv64", "unknown target")


def test_target_no_host_serves_lists_every_host(capsys, write_spec, out_dir, tmp_path):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(
        "hosts:\n"
        "  - {name: box-a, transport: local, targets: [linux-x86_64]}\n"
        "  - {name: box-b, transport: docker, targets: [linux-aarch64], enabled: false}\n"
        "  - {name: arm-1, transport: ssh, address: arm-1.invalid, targets: [linux-aarch64]}\n"
    )
    spec = write_spec(targets=["windows-x86_64"])
    code, lines = run_build(capsys, spec, out_dir, hosts)
    assert_rejected(code, lines, out_dir, str(hosts), "windows-x86_64", "box-a: serves linux-x86_64",
                    "box-b: disabled", "arm-1: serves linux-aarch64")


def test_malformed_spec_yaml(capsys, write_spec, out_dir, local_hosts):
    spec = write_spec(raw="name: tinycnn\ntargets: [linux-x86_64\nversion: 1\n")
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "line", "malformed YAML")


def test_unknown_key_in_spec_suggests_the_right_one(capsys, write_spec, out_dir, local_hosts):
    spec = write_spec(tolerence={"atol": 1e-3})
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "unknown key 'tolerence'", "did you mean 'tolerance'")


def test_nested_unknown_key_in_spec(capsys, write_spec, out_dir, local_hosts):
    spec = write_spec(tolerance={"atol": 1e-3, "rtoll": 1e-3})
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "tolerance", "unknown key 'rtoll'")


def test_duplicate_key_in_spec(capsys, write_spec, out_dir, local_hosts):
    spec = write_spec(raw="name: a\nname: b\nversion: '1'\nmodel: tinycnn.onnx\ntargets: [linux-x86_64]\n")
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "duplicate key 'name'")


def test_malformed_hosts_yaml(capsys, write_spec, out_dir, tmp_path):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("hosts:\n  - name: a\n    transport: local\n  targets: [x\n")
    code, lines = run_build(capsys, write_spec(), out_dir, hosts)
    assert_rejected(code, lines, out_dir, str(hosts), "malformed YAML")


def test_unknown_key_in_hosts_yaml(capsys, write_spec, out_dir, tmp_path):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("hosts:\n  - name: a\n    transport: local\n    targets: [linux-x86_64]\n    slot: 4\n")
    code, lines = run_build(capsys, write_spec(), out_dir, hosts)
    assert_rejected(code, lines, out_dir, str(hosts), "hosts[0]", "unknown key 'slot'", "did you mean 'slots'")


@pytest.mark.parametrize(
    "host, needles",
    [
        ("{name: a, transport: local, targets: [linux-x86_64], slots: 0}", ("hosts[0].slots", "greater than or equal to 1")),
        ("{name: a, transport: ftp, targets: [linux-x86_64]}", ("hosts[0].transport",)),
        ("{name: a, transport: docker, targets: [linux-x86_64], address: x}", ("address do not apply to a docker host",)),
        ("{name: a, transport: ssh, targets: [windows-x86_64]}", ("needs an address",)),
        ("{name: a, transport: local, targets: [plan9]}", ("hosts[0].targets", "unknown target 'plan9'")),
        ("{name: a, transport: docker, targets: [linux-x86_64], tls_ca: ca.pem}",
         ("tls_ca apply to a docker_host: tcp://... engine",)),
        ("{name: a, transport: docker, targets: [linux-x86_64], docker_host: 'tcp://b:2376', tls_cert: c.pem}",
         ("tls_cert and tls_key go together",)),
        ("{name: a, transport: ssh, address: x, targets: [linux-x86_64], tls_key: k.pem}",
         ("tls_key do not apply to a ssh host",)),
        ("{name: a, transport: local, targets: [linux-x86_64], min_free_gb: -1}", ("hosts[0].min_free_gb",)),
        ("{name: a, transport: docker, targets: [linux-x86_64], docker_host: 'tcp://b:2375'}",
         ("tcp://b:2375 has no TLS", "insecure: true")),
        ("{name: a, transport: docker, targets: [linux-x86_64], docker_host: 'tcp://b:2376', tls_ca: ca.pem,"
         " insecure: true}", ("insecure: true applies only to a docker_host: tcp://... engine without TLS",)),
    ],
)
def test_invalid_host_fields(capsys, write_spec, out_dir, tmp_path, host, needles):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(f"hosts:\n  - {host}\n")
    code, lines = run_build(capsys, write_spec(), out_dir, hosts)
    assert_rejected(code, lines, out_dir, str(hosts), *needles)


@pytest.mark.parametrize(
    "fields, needles",
    [
        ({"version": 1.0}, ("version", "quote it")),
        ({"name": "../evil"}, ("name", "may contain only")),
        ({"name": "abc\n"}, ("name", "may contain only")),
        ({"version": "1.0\n"}, ("version", "may contain only")),
        ({"targets": []}, ("targets",)),
        ({"compilers": ["tensorrt"]}, ("unknown compiler 'tensorrt'",)),
        ({"compilers": [{"onnxruntime": {"optimisation": "max"}}]}, ("compilers[0].onnxruntime", "unknown option")),
        ({"compilers": [{"onnxruntime": {"optimization": "max"}}]}, ("optimization must be one of",)),
        ({"tolerance": {"atol": -1}}, ("tolerance.atol",)),
        ({"tolerance": {"outputs": {"prob": {"atol": 0.1}}}}, ("tolerance.outputs.prob", "did you mean 'probs'")),
        ({"tolerance": {"outputs": {"boxes": {"atol": 0.1}}}}, ("tolerance.outputs.boxes", "its outputs: probs")),
        ({"tolerance": {"outputs": {"probs": {"atol": -0.1}}}}, ("tolerance.outputs.probs.atol",)),
        ({"tolerance": {"outputs": {"probs": {"atoll": 0.1}}}}, ("tolerance.outputs.probs", "did you mean 'atol'")),
        ({"accelerate": ["int8-static"]}, ("accelerate", "needs calibration samples", "never calibrates on random")),
        ({"accelerate": ["openvino-f16"]}, ("built by openvino, which is not among the compilers",)),
        ({"accelerate": {"variants": ["fp16"], "gate": {"metric": "m.py:f"}}}, ("metric and max_drop go together",)),
        ({"accelerate": {"variants": ["fp16"], "gate": {"metric": "m.py:f", "max_drop": 0.1}}},
         ("accelerate.gate.metric", "m.py: file not found")),
        ({"calibration": "nope.npz"}, ("calibration", "nope.npz: file not found")),
        ({"functions": {"post": [{"topk": {"k": 5, "labels": "labels.txt"}}]}},
         ("functions.post[0].topk.labels", "labels.txt: file not found")),
        ({"select": {"metric": "fastest"}}, ("select.metric",)),
        ({"select": {"engine": "tensorrt"}}, ("select.engine 'tensorrt' is not among the compilers",)),
        ({"compilers": ["openvino"], "targets": ["ios-arm64"]}, ("no compiler in the list (openvino) can build for ios-arm64",)),
        ({"functions": {"pre": ["resize"]}}, ("functions", "pre[0]: the first pre step must be `image`")),
        ({"functions": {"pre": ["image", {"center_crop": {"size": 64}}]}}, ("functions", "larger than the image")),
        ({"functions": {"fallback": "ignore"}}, ("functions.fallback",)),
        ({"accelerate": ["fp64"]}, ("accelerate.variants[0]", "got 'fp64'")),
        ({"shapes": {"nope": [1, 3, 32, 32]}}, ("shapes", "not model inputs")),
        ({"shapes": {"image": [1, 3, 64, 64]}}, ("shapes.image[2] is 64", "fixes it to 32")),
        ({"samples": "absent.npz"}, ("samples", "absent.npz", "not found")),
        ({"zip": True}, ("zip: true applies to windows-x86_64", "no Windows target")),
        ({"device": {"threads": 0}}, ("device.threads", "greater than or equal to 1", "got 0")),
        ({"device": {"threads": -4}}, ("device.threads", "got -4")),
        ({"device": {"threads": "many"}}, ("device.threads", "got 'many'")),
        ({"device": {"engines": {"tensorrt": {"fp16": True}}}}, ("device.engines", "unknown key 'tensorrt'")),
        ({"device": {"engines": {"openvino": {"stream": 2}}}},
         ("device.engines.openvino", "unknown key 'stream'", "did you mean 'streams'")),
        ({"device": {"engines": {"mnn": {"precision": "fp8"}}}}, ("device.engines.mnn.precision", "got 'fp8'")),
        ({"device": {"cores": 4}}, ("device", "unknown key 'cores'")),
    ],
)
def test_invalid_spec_fields(capsys, write_spec, out_dir, local_hosts, fields, needles):
    spec = write_spec(**fields)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), *needles)


def test_samples_with_wrong_input_name(capsys, write_spec, out_dir, local_hosts):
    spec = write_spec(samples="s.npz")
    np.savez(spec.parent / "s.npz", pixels=np.zeros((1, 3, 32, 32), np.float32))
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, "samples", "['pixels']", "['image']")


def test_dynamic_dimension_needs_a_shape(capsys, write_spec, out_dir, local_hosts, tmp_path):
    from tests.models import make_two_tower, save

    model = save(make_two_tower(), tmp_path / "two_tower.onnx")
    spec = write_spec(model=model)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, "shapes", "'token_ids:0' dimension 1 ('seq') is dynamic")


@pytest.mark.parametrize("dim, needles", [
    ({"min": 64, "max": 32}, ["shapes", "token_ids:0[1]", "min 64 is above max 32"]),
    ({"min": 4, "max": 32, "bench": 64}, ["shapes", "bench", "64 is outside the range 4..32"]),
    ({"min": 0, "max": 32}, ["shapes", "min", ">= 1"]),
    ({"min": 4, "maximum": 32}, ["shapes", "unknown key 'maximum'"]),
])
def test_bad_shape_ranges(capsys, write_spec, out_dir, local_hosts, tmp_path, dim, needles):
    from tests.models import make_two_tower, save

    model = save(make_two_tower(), tmp_path / "two_tower.onnx")
    spec = write_spec(model=model, shapes={"token_ids:0": [1, dim]})
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), *needles)


def test_shape_range_on_a_static_dimension(capsys, write_spec, out_dir, local_hosts):
    spec = write_spec(shapes={"image": [1, {"min": 1, "max": 8}, 32, 32]})
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "shapes", "image[1] is a range", "fixes that dimension to 3")


def test_samples_outside_a_shape_range(capsys, write_spec, out_dir, local_hosts, tmp_path):
    from tests.models import make_two_tower, save

    model = save(make_two_tower(), tmp_path / "two_tower.onnx")
    spec = write_spec(model=model, samples="s.npz", shapes={"token_ids:0": [1, {"min": 2, "max": 16}]})
    np.savez(spec.parent / "s.npz", **{"token_ids:0": np.zeros((1, 40), np.int64),
                                      "features/dense": np.zeros((1, 8), np.float32)})
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, "samples", "size 40 in dimension 1", "2..16")


def _gate_spec(write_spec, tmp_path, detector: bool, gate: dict, samples: int, key: str = "calibration"):
    from tests.models import make_grid_detector, make_linear_classifier, save

    model = save(make_grid_detector(1.0) if detector else make_linear_classifier(1.0), tmp_path / "m.onnx")
    post = [{"detections": {"format": "yolov8"}}] if detector else ["softmax", {"topk": {"k": 3}}]
    spec = write_spec(model=model, **{key: "data.npz"}, functions={"post": post},
                      accelerate={"variants": ["int8-dynamic"], "gate": gate})
    shape = (samples, 1, 3, 16, 16) if detector else (samples, 1, 3, 8, 8)
    np.savez(spec.parent / "data.npz", **{"image" if detector else "pixels": np.zeros(shape, np.float32)})
    return spec


@pytest.mark.parametrize("key, samples, held", [("calibration", 24, "12"), ("evaluation", 19, "19")])
def test_a_task_gate_over_too_few_held_out_samples(capsys, write_spec, out_dir, local_hosts, tmp_path, key,
                                                   samples, held):
    spec = _gate_spec(write_spec, tmp_path, False, {"top1_agreement": 0.9}, samples, key)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "accelerate.gate.top1_agreement", "at least 20 held-out",
                    f"gives {held}")


@pytest.mark.parametrize("detector, gate, needles", [
    (True, {"top1_agreement": 0.9}, ["accelerate.gate.top1_agreement", "no meaning", "use box_recall"]),
    (False, {"sequence_agreement": 0.9}, ["accelerate.gate.sequence_agreement", "not a sequence",
                                          "use top1_agreement"]),
    (False, {"box_recall": 0.9}, ["accelerate.gate.box_recall", "needs the detections function"]),
    (False, {"top1_agreement": 0.9, "box_recall": 0.9}, ["accelerate.gate", "give one criterion"]),
])
def test_a_task_gate_that_does_not_fit_the_model(capsys, write_spec, out_dir, local_hosts, tmp_path, detector,
                                                 gate, needles):
    spec = _gate_spec(write_spec, tmp_path, detector, gate, 60)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), *needles)


def test_target_filter_matching_nothing(capsys, write_spec, out_dir, local_hosts):
    code, lines = run_build(capsys, write_spec(), out_dir, local_hosts, "--target", "ios-*")
    assert_rejected(code, lines, out_dir, "--target", "ios-*")


import numpy as np  # noqa: E402  (used by the samples test above)


@pytest.mark.parametrize("change, where", [
    (lambda s: s["jobs"][0].pop("status"), "summary.jobs[0].status: missing"),
    (lambda s: s["jobs"][0].update(candidates=[{"id": "ort"}]), "summary.jobs[0].candidates[0].engine: missing"),
    (lambda s: s.update(counts={"built": "one"}), "summary.counts.built: expected int"),
])
def test_a_malformed_summary_to_compare_with_is_one_line_naming_the_key(capsys, tmp_path, change, where):
    """summary.json is read back (last night's, for --compare and `report`) through one
    definition: a broken one is refused with the key, not a crash in the report (#17)."""
    import json

    data = {"schema_version": 1, "modelpack_version": "0", "run_id": "r", "inventory": "hosts.yaml",
            "counts": {"built": 1},
            "jobs": [{"job": "m/linux-x86_64", "name": "m", "version": "1", "spec": "m.yaml",
                      "target": "linux-x86_64", "status": "built", "candidates": []}]}
    good = tmp_path / "good.json"
    good.write_text(json.dumps(data))
    change(data)
    bad = tmp_path / "summary.json"
    bad.write_text(json.dumps(data))
    assert main(["report", str(good), "--compare", str(bad), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and where in err[0]


def test_a_plain_tcp_engine_accepted_with_insecure_true_warns_at_each_use(caplog):
    """#14: plain tcp:// is refused unless the inventory says insecure: true, and then it
    is never silent."""
    import logging

    from orchestrator.inventory import Host
    from orchestrator.transports.docker import DockerTransport

    host = Host(name="lab", transport="docker", targets=["linux-x86_64"], docker_host="tcp://127.0.0.1:2375",
                insecure=True)
    with caplog.at_level(logging.WARNING):
        assert DockerTransport(host)._tls() is False
    assert "without TLS (insecure: true)" in caplog.text and "lab" in caplog.text


@pytest.mark.parametrize("where", ["out-is-a-file", "out-under-a-file", "json-is-a-folder", "json-under-a-file"])
def test_an_output_that_cannot_be_written_is_refused_before_building(capsys, write_spec, local_hosts, tmp_path,
                                                                      where):
    """#14: `--out` that is a file or under one, and `--json` that is a folder or under a
    file, are one line and exit 2 before any host is touched, and nothing is written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    out, extra = tmp_path / "dist", []
    if where == "out-is-a-file":
        out = blocker
    elif where == "out-under-a-file":
        out = blocker / "dist"
    elif where == "json-is-a-folder":
        extra = ["--json", str(tmp_path)]
    else:
        extra = ["--json", str(blocker / "summary.json")]
    code, lines = run_build(capsys, write_spec(), out, local_hosts, *extra)
    assert code == 2 and len(lines) == 1, lines
    assert ("--json" if where.startswith("json") else "--out") in lines[0]
    assert blocker.read_text() == "mine" and not (tmp_path / "dist").exists()


# -- a hostile spec reaches only its own folder (issue 14) --------------------------------
LABELLED = {"functions": {"post": ["softmax", {"topk": {"k": 3, "labels": "labels.txt"}}]}}


@pytest.mark.parametrize("key,fields", [
    ("functions.post[1].topk.labels", {"functions": {"post": [{"topk": {"k": 3, "labels": "/etc/passwd"}}]}}),
    ("model", {"model": None}),
    ("samples", {"samples": "../outside.npz"}),
    ("accelerate.gate.metric", None),
])
def test_spec_paths_outside_the_spec_folder_are_refused(capsys, write_spec, out_dir, local_hosts, tmp_path,
                                                        key, fields):
    import shutil

    shutil.copyfile(TINYCNN, tmp_path / "outside.onnx")
    (tmp_path / "outside.npz").write_bytes(b"")
    (tmp_path / "metric.py").write_text("def score(outputs, reference):\n    return 1.0\n")
    if fields is None:
        fields = {"accelerate": {"variants": ["fp16"], "gate": {"metric": "../metric.py:score", "max_drop": 0.1}}}
    if key.startswith("functions"):
        key = "functions.post[0].topk.labels"
    spec = write_spec(**fields) if key != "model" else write_spec(model=None, raw=(
        "name: tinycnn\nversion: 1.0.0\nmodel: ../outside.onnx\ntargets: [linux-x86_64]\ncompilers: [onnxruntime]\n"))
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), key, "outside the spec's folder", "--allow-outside")


def test_allow_outside_lets_a_named_folder_in(capsys, write_spec, out_dir, local_hosts, tmp_path):
    import shutil

    shared = tmp_path / "shared-models"
    shared.mkdir()
    shutil.copyfile(TINYCNN, shared / "tinycnn.onnx")
    spec = write_spec(model=None, raw="name: tinycnn\nversion: 1.0.0\nmodel: ../shared-models/tinycnn.onnx\n"
                                      "targets: [linux-x86_64]\ncompilers: [onnxruntime]\n")
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, "outside the spec's folder")
    code, lines = run_build(capsys, spec, out_dir, local_hosts, "--allow-outside", str(shared), "--no-cache")
    assert code == 0, lines


def test_a_labels_file_must_match_the_models_classes(capsys, write_spec, out_dir, local_hosts):
    spec = write_spec(**LABELLED)
    (spec.parent / "labels.txt").write_text("\n".join(f"class {i}" for i in range(9)) + "\n")
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "labels", "9 lines", "10 classes")


@pytest.mark.parametrize("what", ["spec", "model", "samples"])
def test_a_fifo_is_refused_not_waited_on(capsys, write_spec, out_dir, local_hosts, what):
    import os

    spec = write_spec(samples="samples.npz") if what == "samples" else write_spec()
    fifo = spec if what == "spec" else spec.parent / ("tinycnn.onnx" if what == "model" else "samples.npz")
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, fifo.name, "not a regular file")


def test_a_model_symlink_loop_is_one_line(capsys, write_spec, out_dir, local_hosts):
    spec = write_spec()
    model = spec.parent / "tinycnn.onnx"
    model.unlink()
    model.symlink_to(spec.parent / "loop.onnx")
    (spec.parent / "loop.onnx").symlink_to(model)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "model")


@pytest.mark.parametrize("raw", ["[" * 20000 + "]" * 20000, "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 3000)),
                                 "? [1, 2]\n: x\nname: a\n", "{[1]: 2}\n"])
def test_pathological_yaml_is_one_line(capsys, write_spec, out_dir, local_hosts, raw):
    spec = write_spec(raw=raw)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec))


@pytest.mark.parametrize("location, command", [
    *((location, command) for location in ("/etc/passwd", "../outside.bin", "link.bin", "missing.bin")
      for command in ("build", "init")),
    ("model.onnx", "build"),  # the name a build gives the model itself on the host
])
def test_external_data_outside_the_model_folder_is_one_line(capsys, write_spec, out_dir, local_hosts, tmp_path,
                                                            location, command):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "ext.onnx"))
    (tmp_path / "outside.bin").write_bytes(bytes(64))
    (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
    (folder / "model.onnx").write_bytes(bytes(64))
    if command == "init":
        code = main(["init", str(folder / "ext.onnx"), "--hosts", str(local_hosts)])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "external data" in lines[0], lines
        return
    spec = write_spec(model=None, raw="name: ext\nversion: 1.0.0\nmodel: ../m/ext.onnx\ntargets: [linux-x86_64]\n"
                                      "compilers: [onnxruntime]\n")
    code, lines = run_build(capsys, spec, out_dir, local_hosts, "--allow-outside", str(folder))
    assert_rejected(code, lines, out_dir, "model", "external data")


# -- `modelpack run`: inputs are checked against the package before anything is read ------
def _npy_header_claiming(path: Path, shape: tuple[int, ...]) -> None:
    import numpy as np

    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
        out.write(bytes(64))


@pytest.mark.parametrize("case", ["empty", "huge-header", "wrong-rank", "not-npy", "fifo", "output-is-folder",
                                  "output-unwritable", "unknown-input"])
def test_run_refuses_bad_inputs_in_one_line(capsys, tinycnn_package, tmp_path, case):
    import os

    import numpy as np

    feed = tmp_path / "image.npy"
    np.save(feed, np.zeros((1, 3, 32, 32), np.float32))
    output, name = tmp_path / "o.npz", "image"
    if case == "empty":
        feed.write_bytes(b"")
    elif case == "huge-header":
        _npy_header_claiming(feed, (10 ** 15, 3, 32, 32))
    elif case == "wrong-rank":
        np.save(feed, np.zeros((3, 32, 32), np.float32))
    elif case == "not-npy":
        feed.write_text("1, 2, 3\n")
    elif case == "fifo":
        feed.unlink()
        os.mkfifo(feed)
    elif case == "output-is-folder":
        output.mkdir()
    elif case == "output-unwritable":
        output = tmp_path / "a-file" / "o.npz"
        output.parent.write_text("not a folder")
    elif case == "unknown-input":
        name = "img"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = main(["run", str(tinycnn_package), "--input", f"{name}={feed}", "--output", str(output)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "something was left behind"
    if case == "huge-header":
        assert "10" in lines[0] and "bytes" in lines[0]


@pytest.mark.parametrize("option", [["--timeout", "-5"], ["--timeout", "nan"], ["--connect-timeout", "0"],
                                    ["--push-timeout", "inf"], ["--jobs", "0"], ["--jobs", "two"]])
def test_command_line_numbers_are_checked_up_front(capsys, write_spec, out_dir, local_hosts, option):
    with pytest.raises(SystemExit) as exited:
        main(["build", str(write_spec()), "--out", str(out_dir), "--hosts", str(local_hosts), *option])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exited.value.code == 2 and len(lines) == 1 and option[0] in lines[0], lines
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep-me.tar.gz"]


@pytest.mark.parametrize("shape, needle", [([0, 3, 32, 32], ">= 1"), ([10 ** 11, 3, 32, 32], "at most"),
                                           ([{"min": 1, "max": 10 ** 12}, 3, 32, 32], "at most")])
def test_zero_and_absurd_shapes_are_refused_up_front(capsys, write_spec, out_dir, local_hosts, shape, needle):
    spec = write_spec(shapes={"image": shape})
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, str(spec), "shapes", needle)


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never says a word (a hung engine or sshd)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    accepted = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


@pytest.mark.parametrize("transport", ["docker", "ssh"])
def test_a_host_that_accepts_but_never_answers_costs_only_the_connect_timeout(capsys, write_spec, out_dir,
                                                                              tmp_path, silent_server, transport):
    import time

    address = (f"    docker_host: tcp://127.0.0.1:{silent_server}\n    insecure: true\n" if transport == "docker" else
               f"    address: 127.0.0.1\n    port: {silent_server}\n    user: nobody\n"
               "    host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHGKfMG0ZQLVJOs9d1c9Nb5zO2fK0dB8rXUi9mC4cQ7u\n")
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(f"hosts:\n  - name: mute\n    transport: {transport}\n    targets: [linux-x86_64]\n{address}")
    import subprocess
    import sys

    started = time.monotonic()  # a process of its own: what reaches a real terminal, paramiko's log included
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "hosts", "check", "--hosts", str(hosts),
                           "--connect-timeout", "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and time.monotonic() - started < 15, done
    assert "Traceback" not in done.stderr + done.stdout and "FAIL mute" in done.stdout, done
    noise = [line for line in done.stderr.splitlines() if line.strip() and "without TLS" not in line]
    assert len(done.stdout.strip().splitlines()) == 1 and not noise, done
    started = time.monotonic()
    code, lines = run_build(capsys, write_spec(), out_dir, hosts, "--connect-timeout", "2")
    assert code == 1 and time.monotonic() - started < 10
    assert not any("Traceback" in line for line in lines)


MATH = "$\\x{$ <script>alert(1)</script>"


def test_report_and_card_render_hostile_candidate_text_as_text(capsys, tinycnn_package, tmp_path):
    """Candidate ids and reasons come from hosts and packages: text that matplotlib would
    read as a formula, or HTML, is shown as text; rows with missing keys are shown too."""
    import json

    from orchestrator.packager.package import write_archive, write_manifest
    from orchestrator.runtime.archive import extract

    folder = tmp_path / "pkg"
    extract(tinycnn_package, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["candidates"] = [{"id": MATH, "status": "selected", "median_ms": 1.5, "reason": MATH},
                              {"median_ms": 2.0}, {}]
    write_manifest(folder, manifest)
    hostile = tmp_path / "tinycnn-1.0.0-linux-x86_64.tar.gz"
    write_archive(folder, hostile)
    assert main(["inspect", str(hostile), "--html"]) == 0
    card = capsys.readouterr().out
    assert "<script>alert" not in card and "&lt;script&gt;" in card

    out = tmp_path / "run"
    assert main(["build", str(tinycnn_package.parent.parent / "modelpack.yaml"), "--out", str(out), "--hosts",
                 str(tinycnn_package.parent.parent / "hosts.yaml"), "--json", str(tmp_path / "s.json"), "--no-cache"]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    for job in summary["jobs"]:
        job["candidates"] = [{"id": MATH, "engine": MATH, "status": "selected", "reason": MATH, "median_ms": 1.0,
                              "spread_ms": 0.1, "max_abs_error": 1e-6, "emulated": False}]
    (tmp_path / "s.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s.json"), "--out", str(tmp_path / "r.html")]) == 0
    report = (tmp_path / "r.html").read_text()
    assert "<script>alert" not in report and "&lt;script&gt;" in report


def _without_input_shape(source: Path, dest: Path) -> Path:
    """``source`` with its first input's shape removed: its rank unknown, which
    onnxruntime runs at any rank (exporters that lose the shape write such models)."""
    import onnx

    model = onnx.load(str(source))
    model.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(model, str(dest))
    return dest


@pytest.mark.parametrize("command", ["build", "init"])
def test_an_input_with_no_shape_needs_its_size_in_shapes(capsys, write_spec, out_dir, local_hosts, tmp_path,
                                                         command):
    model = _without_input_shape(TINYCNN, tmp_path / "unranked.onnx")
    if command == "init":
        code = main(["init", str(model), "--hosts", str(local_hosts)])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, lines
        assert "'image' has no shape" in lines[0] and "shapes" in lines[0], lines
        return
    spec = write_spec(model=model)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, "shapes", "'image' has no shape", "rank")


@pytest.mark.parametrize("command", ["build", "init"])
def test_a_model_with_a_sequence_output_is_refused_in_one_line(capsys, write_spec, out_dir, local_hosts, tmp_path,
                                                               command):
    # init printed a traceback (exit 1) for an output that is not a tensor
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("SplitToSequence", ["x"], ["pieces"], axis=0)], "split",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_value_info("pieces", helper.make_sequence_type_proto(
            helper.make_tensor_type_proto(TensorProto.FLOAT, None)))])
    model = tmp_path / "sequence.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    if command == "init":
        code = main(["init", str(model), "--hosts", str(local_hosts)])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, lines
        assert str(model) in lines[0] and "'pieces' is a sequence_type" in lines[0], lines
        return
    spec = write_spec(model=model)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, "model", "'pieces' is a sequence_type")


@pytest.mark.parametrize("command", ["build", "init"])
def test_a_model_over_2_gb_is_refused_in_one_line_before_its_weights_are_read(capsys, write_spec, out_dir,
                                                                              local_hosts, tmp_path, command):
    # 2.4 GB of weights beside the graph: onnxruntime runs it, and modelpack said "ONNX
    # checker rejected the model: Failed to serialize proto", blaming a valid model. The
    # weights file here is sparse: the refusal must come before any of it is read.
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path / "big"
    folder.mkdir()
    side = 24576
    with open(folder / "big.onnx.data", "wb") as data:
        data.truncate(side * side * 4)
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[side, side],
                         data_location=TensorProto.EXTERNAL)
    for key, value in {"location": "big.onnx.data", "offset": "0", "length": str(side * side * 4)}.items():
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", side])], [weight])
    model = folder / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    problem = "the model is 2.42 GB with its external data"
    if command == "init":
        code = main(["init", str(model), "--hosts", str(local_hosts)])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, lines
        assert str(model) in lines[0] and problem in lines[0] and "over 2 GB" in lines[0], lines
        return
    spec = write_spec(model=model)  # (it copies the model only: its sparse weights are made beside it)
    with open(spec.parent / "big.onnx.data", "wb") as data:
        data.truncate(side * side * 4)
    code, lines = run_build(capsys, spec, out_dir, local_hosts)
    assert_rejected(code, lines, out_dir, "model", problem)
