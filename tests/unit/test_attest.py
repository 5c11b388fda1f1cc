"""Release-grade output: signed packages, SLSA provenance and an ML-BOM, made on the
controller with a release key that never leaves it, and checked before anything runs."""

from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from orchestrator.cli import main
from orchestrator.packager.package import write_archive, write_manifest
from orchestrator.runtime import PackageError, load
from orchestrator.runtime.archive import extract
from orchestrator.runtime.checks import sha256_file


def key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> dict[str, Path]:
    """The example built twice with one release key, plus a second key pair."""
    import shutil

    from tests.models import TINYCNN

    folder = tmp_path_factory.mktemp("signed")
    shutil.copyfile(TINYCNN, folder / "tinycnn.onnx")
    (folder / "modelpack.yaml").write_text("name: tinycnn\nversion: 1.0.0\nmodel: tinycnn.onnx\n"
                                           "targets: [linux-x86_64]\ncompilers: [onnxruntime]\n")
    (folder / "hosts.yaml").write_text("hosts:\n  - name: here\n    transport: local\n    targets: [linux-x86_64]\n")
    key, public = key_pair(folder, "release")
    other_key, other_public = key_pair(folder, "other")
    for out in ("a", "b"):
        assert main(["build", str(folder / "modelpack.yaml"), "--hosts", str(folder / "hosts.yaml"), "--out",
                     str(folder / out), "--sign-key", str(key), "--json", str(folder / f"{out}.json")]) == 0
    return {"folder": folder, "a": folder / "a" / "tinycnn-1.0.0-linux-x86_64.tar.gz",
            "b": folder / "b" / "tinycnn-1.0.0-linux-x86_64.tar.gz", "key": key, "public": public,
            "other_key": other_key, "other_public": other_public, "hosts": folder / "hosts.yaml"}


def unpack(archive: Path, dest: Path) -> Path:
    extract(archive, dest)
    return dest


def verify(capsys, archive: Path, public: Path, hosts: Path) -> tuple[int, list[str]]:
    code = main(["verify", str(archive), "--public-key", str(public), "--hosts", str(hosts)])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_signed_package_verifies_and_its_summary_names_the_published_file(capsys, signed):
    code, errors = verify(capsys, signed["a"], signed["public"], signed["hosts"])
    assert code == 0, errors
    summary = json.loads((signed["folder"] / "a.json").read_text())
    assert summary["jobs"][0]["sha256"] == sha256_file(signed["a"]), "the summary names the file that was published"
    assert main(["inspect", str(signed["a"])]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "attestations" in l)
    assert "signed by key" in line and "provenance.intoto.json" in line and "bom.cdx.json" in line


def _rewrite(archive: Path, dest: Path, change) -> Path:
    """A copy of the package changed by ``change(folder)``, its file table recomputed
    (so only the signature can tell)."""
    folder = unpack(archive, dest.with_suffix(".d"))
    change(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    write_manifest(folder, manifest)
    for stray in [p for p in folder.iterdir() if p.name in ("signature.sigstore.json", "provenance.intoto.json",
                                                            "bom.cdx.json")]:
        manifest["files"].pop(stray.name, None)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    write_archive(folder, dest)
    return dest


@pytest.mark.parametrize("attack, needle", [
    ("tamper", "model/model.ort"), ("remove", "samples"), ("other key", "Key mismatch"), ("unsigned", "not signed")])
def test_tampering_removal_or_another_key_is_refused_in_one_line(capsys, signed, tmp_path, attack, needle):
    archive, public = signed["a"], signed["public"]
    if attack == "tamper":
        archive = _rewrite(archive, tmp_path / "t" / archive.name,
                           lambda f: (f / "model" / "model.ort").write_bytes((f / "model" / "model.ort").read_bytes()
                                                                              + b"\0"))
    elif attack == "remove":
        archive = _rewrite(archive, tmp_path / "r" / archive.name,
                           lambda f: next(p for p in (f / "samples").rglob("*") if p.is_file()).unlink())
    elif attack == "other key":
        public = signed["other_public"]
    else:
        archive = _rewrite(archive, tmp_path / "u" / archive.name, lambda f: (f / "signature.sigstore.json").unlink())
    code, errors = verify(capsys, archive, public, signed["hosts"])
    assert code == 1 and len(errors) == 1 and needle in errors[0], errors
    folder = unpack(archive, tmp_path / "loaded")
    with pytest.raises(PackageError, match="signature|not signed"):
        load(folder, public_key=public)


def test_building_twice_gives_the_same_payload_but_fresh_attestations(signed, tmp_path):
    a, b = unpack(signed["a"], tmp_path / "a"), unpack(signed["b"], tmp_path / "b")
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes(), "the payload is reproducible"
    payload = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()} - {
        "signature.sigstore.json", "provenance.intoto.json", "bom.cdx.json"}
    assert all((a / name).read_bytes() == (b / name).read_bytes() for name in payload)
    assert (a / "signature.sigstore.json").read_bytes() != (b / "signature.sigstore.json").read_bytes()


def test_the_provenance_is_slsa_v1_its_subjects_are_the_payload_and_it_is_signed(signed, tmp_path):
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2

    folder = unpack(signed["a"], tmp_path / "p")
    envelope = json.loads((folder / "provenance.intoto.json").read_text())
    body = base64.b64decode(envelope["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(envelope["payloadType"]), envelope["payloadType"].encode(), len(body), body)
    public = serialization.load_pem_public_key(signed["public"].read_bytes())
    public.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    statement = json.loads(body)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    json_format.ParseDict(statement["predicate"], provenance_pb2.Provenance())  # unknown or mistyped fields raise
    schema = Draft202012Validator(json.loads((Path(__file__).parent.parent / "schemas" /
                                              "slsa-provenance-v1.schema.json").read_text()))
    assert list(schema.iter_errors(statement)) == []
    broken = json.loads(body)
    del broken["predicate"]["buildDefinition"]["buildType"]
    broken["predicate"]["runDetails"]["metadata"]["startedOn"] = "yesterday"
    assert len(list(schema.iter_errors(broken))) == 2, "the schema can fail"
    manifest = json.loads((folder / "manifest.json").read_text())
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects == {"manifest.json": sha256_file(folder / "manifest.json"),
                        **{name: sha256_file(folder / name) for name in manifest["files"]}}
    dependencies = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert dependencies["source model"]["digest"]["sha256"] == manifest["source"]["sha256"]
    # every distribution that built and tested it: the build host's toolchain, not only the engine
    assert {"onnxruntime", "onnx", "numpy"} <= set(dependencies)
    assert dependencies["onnx"]["uri"] == f"pkg:pypi/onnx@{manifest['provenance']['build_platform']['toolchain']['onnx']}"
    details = statement["predicate"]["runDetails"]
    assert details["builder"]["version"]["host"] == "here" and details["metadata"]["startedOn"].endswith("Z")


def test_the_ml_bom_is_valid_cyclonedx_1_6_and_names_the_model_and_its_dependencies(signed, tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    folder = unpack(signed["a"], tmp_path / "bom")
    text = (folder / "bom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    model = bom["metadata"]["component"]
    assert model["type"] == "machine-learning-model" and model["name"] == "tinycnn"
    properties = {p["name"]: p["value"] for p in model["properties"]}
    assert properties["modelpack:selftest"] == "passed" and properties["modelpack:engine"] == "onnxruntime"
    assert "modelpack:input:image" in properties
    libraries = {c["name"]: c for c in bom["components"] if c["type"] == "library"}
    assert {"numpy", "onnxruntime"} <= set(libraries) and libraries["onnxruntime"]["purl"].startswith("pkg:pypi/")


def test_sign_signs_an_existing_package_and_a_bad_key_is_refused_before_building(capsys, signed, tmp_path):
    unsigned = tmp_path / signed["a"].name
    _rewrite(signed["a"], unsigned, lambda f: (f / "signature.sigstore.json").unlink())
    assert main(["sign", str(unsigned), "--key", str(signed["other_key"])]) == 0
    capsys.readouterr()
    code, errors = verify(capsys, unsigned, signed["other_public"], signed["hosts"])
    assert code == 0, errors
    with tarfile.open(unsigned) as tar:
        assert "signature.sigstore.json" in tar.getnames()

    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    code = main(["build", str(signed["folder"] / "modelpack.yaml"), "--hosts", str(signed["hosts"]),
                 "--out", str(tmp_path / "never"), "--sign-key", str(bad)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1 and "--sign-key" in errors[0], errors
    assert not (tmp_path / "never").exists()


def test_the_summary_report_and_card_say_who_signed_and_what_the_package_carries(capsys, signed, tmp_path):
    summary = json.loads((signed["folder"] / "a.json").read_text())
    job = summary["jobs"][0]
    from orchestrator.attest import SigningKey

    assert job["signer"] == SigningKey.load(signed["key"], "--sign-key").key_id
    assert job["attestations"] == ["bom.cdx.json", "provenance.intoto.json", "signature.sigstore.json"]
    assert main(["report", str(signed["folder"] / "a.json"), "--out", str(tmp_path / "r.html")]) == 0
    assert f"signed by key <code>{job['signer'][:16]}</code>" in (tmp_path / "r.html").read_text()
    capsys.readouterr()
    assert main(["inspect", "--html", str(signed["a"])]) == 0
    assert f"signed by key {job['signer'][:16]}" in capsys.readouterr().out
    with tarfile.open(signed["a"]) as tar:
        bundle = json.loads(tar.extractfile("signature.sigstore.json").read())
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == job["signer"], "one key id everywhere"
