"""modelpack publish / pull against a real OCI registry: Debian's docker-registry (the
reference distribution server) on loopback, plain, with basic auth and with TLS. What
the registry holds is read through its own HTTP API, not through modelpack."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.conftest import unavailable
from tests.registry import SERVER, KillingProxy, Registry, free_port

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
#: the artifact types registry tools look for (Sigstore bundle v0.3, in-toto, CycloneDX)
ATTESTATION_KINDS = {"signature.sigstore.json": "application/vnd.dev.sigstore.bundle.v0.3+json",
                     "provenance.intoto.json": "application/vnd.in-toto+json",
                     "bom.cdx.json": "application/vnd.cyclonedx+json"}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict:
    """Two models x two targets, signed: linux-x86_64 by a real build on the local
    transport, windows-x86_64 by the real packager in-process with the platform's answer
    faked (as tests/unit/test_device_targets.py does), then signed with `modelpack sign`."""
    from orchestrator.packager.build import build
    from orchestrator.packager.job import CompilerCall, Job, JobTarget
    from orchestrator.runtime.checks import sha256_file
    from orchestrator.targets import TARGETS
    from tests.models import TINYCNN, make_linear_classifier, save
    from tests.unit.test_attest import key_pair

    folder = tmp_path_factory.mktemp("matrix")
    dist = folder / "dist"
    key, public = key_pair(folder, "release")
    (folder / "hosts.yaml").write_text("hosts:\n  - name: here\n    transport: local\n    targets: [linux-x86_64]\n")
    models = {"tinycnn": TINYCNN, "linear": save(make_linear_classifier(1.0), folder / "linear.onnx")}
    for name, model in models.items():
        spec = folder / name
        spec.mkdir()
        shutil.copyfile(model, spec / "model.onnx")
        (spec / "modelpack.yaml").write_text(f"name: {name}\nversion: 1.0.0\nmodel: model.onnx\n"
                                             "targets: [linux-x86_64]\ncompilers: [onnxruntime]\n")
        assert main(["build", str(spec / "modelpack.yaml"), "--hosts", str(folder / "hosts.yaml"), "--out", str(dist),
                     "--sign-key", str(key), "-q", "--json", str(folder / f"{name}.json")]) == 0
        target = TARGETS["windows-x86_64"]
        job = Job(name=name, version="1.0.0", model="model.onnx", model_sha256=sha256_file(model),
                  target=JobTarget(target.name, target.os, target.arch, target.build_os, target.build_arch),
                  compilers=[CompilerCall("onnxruntime")], atol=1e-4, rtol=1e-3)
        work = folder / f"{name}-windows"
        (work / "in").mkdir(parents=True)
        shutil.copyfile(model, work / "in" / "model.onnx")
        with pytest.MonkeyPatch.context() as patch:
            for where in ("orchestrator.packager.environment.this_machine", "orchestrator.runtime.checks.this_machine"):
                patch.setattr(where, lambda: ("windows", "x86_64"))
            result = build(job, work / "in", work / "out", lambda stage: None)
        shutil.copyfile(work / "out" / result["package"], dist / result["package"])
        assert main(["sign", str(dist / result["package"]), "--key", str(key)]) == 0
    packages = sorted(dist.glob("*.tar.gz"))
    assert len(packages) == 4
    return {"dist": dist, "packages": packages, "public": public, "folder": folder}


@pytest.fixture
def registry(tmp_path):
    """A plain-HTTP registry; the test may restart or reconfigure it."""
    if shutil.which(SERVER) is None:
        unavailable(f"{SERVER} is not installed (Debian's docker-registry package; scripts/setup --for-tests"
                    " installs it)", "MODELPACK_REQUIRE_DOCKER")
    started = Registry(tmp_path / "registry", free_port())
    started.folder.mkdir()
    yield started.start()
    started.kill()


def contents(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def api_json(registry: Registry, path: str, accept: str = MANIFEST) -> tuple[int, dict, dict]:
    status, body, headers = registry.get(path, accept)
    return status, json.loads(body) if body else {}, headers


def tag_digests(registry: Registry, repositories: list[str]) -> dict[str, str]:
    """Every tag of these repositories and the manifest digest it names, per the API."""
    found = {}
    for repository in repositories:
        status, listing, _ = api_json(registry, f"{repository}/tags/list")
        for tag in (listing.get("tags") or []) if status == 200 else []:
            accept = INDEX if tag.startswith("sha256-") else MANIFEST
            status, body, headers = registry.get(f"{repository}/manifests/{tag}", accept)
            assert status == 200
            found[f"{repository}:{tag}"] = "sha256:" + hashlib.sha256(body).hexdigest()
    return found


def lines_of(capsys) -> tuple[list[str], list[str]]:
    captured = capsys.readouterr()
    return captured.out.splitlines(), [line for line in captured.err.splitlines() if line.strip()]


def test_a_signed_matrix_is_published_pulled_back_verified_and_republishing_changes_nothing(
        capsys, matrix, registry, tmp_path):
    capsys.readouterr()
    reference = f"oci://{registry.host}/releases:nightly"
    assert main(["publish", str(matrix["dist"]), reference, "--plain-http", "--public-key", str(matrix["public"])]) == 0
    out, _ = lines_of(capsys)
    assert len(out) == 4 and all(": pushed " in line for line in out), out

    status, catalog, _ = api_json(registry, "_catalog")
    assert sorted(catalog["repositories"]) == ["releases/linear", "releases/tinycnn"]
    for archive in matrix["packages"]:
        files = contents(archive)
        package = json.loads(files["manifest.json"])
        repository, target = f"releases/{package['name']}", package["target"]["name"]
        status, listing, _ = api_json(registry, f"{repository}/tags/list")
        for tag in (f"1.0.0-{target}", f"nightly-{target}"):
            assert tag in listing["tags"]
            status, document, headers = api_json(registry, f"{repository}/manifests/{tag}")
            assert status == 200 and document["artifactType"] == "application/vnd.modelpack.package.v1"
            notes = document["annotations"]
            assert (notes["org.modelpack.name"], notes["org.modelpack.version"], notes["org.modelpack.target"],
                    notes["org.modelpack.source.sha256"]) == (package["name"], "1.0.0", target,
                                                              package["source"]["sha256"])
            assert notes["org.modelpack.engine"].startswith(next(iter(package["engines"])))
            layer = document["layers"][0]
            assert layer["digest"] == "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
            digest = headers["Docker-Content-Digest"]
        # the attestations hang off the package as referrers (the OCI 1.1 fallback tag on
        # this registry, which has no referrers API)
        status, index, _ = api_json(registry, f"{repository}/manifests/{digest.replace(':', '-')}", INDEX)
        assert status == 200
        kinds = {m["artifactType"] for m in index["manifests"]}
        assert kinds == {kind for name, kind in ATTESTATION_KINDS.items() if name in files}
        if target == "linux-x86_64":  # built with --sign-key: all three (`modelpack sign` adds a signature only)
            assert len(kinds) == 3
        for entry in index["manifests"]:
            status, referrer, _ = api_json(registry, f"{repository}/manifests/{entry['digest']}")
            assert referrer["subject"]["digest"] == digest and referrer["artifactType"] == entry["artifactType"]
            name = referrer["layers"][0]["annotations"]["org.opencontainers.image.title"]
            status, blob, _ = registry.get(f"{repository}/blobs/{referrer['layers'][0]['digest']}", "*/*")
            assert status == 200 and blob == files[name], f"{name} as attached is the package's own"

        pulled = tmp_path / "pulled"
        windows = target == "windows-x86_64"
        assert main(["pull", f"oci://{registry.host}/{repository}:nightly-{target}", "--plain-http",
                     "--out", str(pulled), "--public-key", str(matrix["public"]), *(["--zip"] if windows else [])]) == 0
        assert (pulled / archive.name).read_bytes() == archive.read_bytes()
        if windows:  # the .zip twin a Windows user expects: the same files, byte for byte
            with zipfile.ZipFile(pulled / archive.name.replace(".tar.gz", ".zip")) as twin:
                assert {n: twin.read(n) for n in twin.namelist()} == files
    out, _ = lines_of(capsys)
    assert len(out) == 4 and all("signature verified" in line for line in out)
    linux = next(a for a in matrix["packages"] if "linux" in a.name)
    name = json.loads(contents(linux)["manifest.json"])["name"]
    elsewhere = tmp_path / "elsewhere"
    assert main(["pull", f"oci://{registry.host}/releases/{name}:nightly-linux-x86_64", "--plain-http",
                 "--out", str(elsewhere), "--zip"]) == 2
    _, err = lines_of(capsys)
    assert err == [f"modelpack: error: --zip: applies to windows-x86_64 packages; {registry.host}/releases/{name}"
                   ":nightly-linux-x86_64 is linux-x86_64"], err
    assert not elsewhere.exists() or not any(elsewhere.iterdir()), "nothing written"

    before = tag_digests(registry, ["releases/tinycnn", "releases/linear"])
    assert len(before) == 4 * 3  # per package: two tags and one referrers index
    blobs = sorted(p.relative_to(registry.storage) for p in registry.storage.rglob("*") if p.is_file())
    assert main(["publish", str(matrix["dist"]), reference, "--plain-http"]) == 0
    out, _ = lines_of(capsys)
    assert all(": unchanged " in line for line in out) and len(out) == 4
    assert tag_digests(registry, ["releases/tinycnn", "releases/linear"]) == before
    assert sorted(p.relative_to(registry.storage) for p in registry.storage.rglob("*") if p.is_file()) == blobs


@pytest.mark.parametrize("when", ["mid-blob", "package manifest", "a referrer", "the first tag"])
def test_a_registry_killed_mid_push_leaves_no_tag_on_a_partial_artifact(capsys, matrix, registry, tmp_path, when):
    archive = next(p for p in matrix["packages"] if p.name.startswith("tinycnn") and "linux" in p.name)
    size = archive.stat().st_size
    rule = {"mid-blob": lambda sent, puts: sent > size // 2,
            "package manifest": lambda sent, puts: puts >= 1,
            "a referrer": lambda sent, puts: puts >= 3,
            "the first tag": lambda sent, puts: puts >= 6}[when]  # 1 package + 3 referrers + 1 index, then tags
    proxy = KillingProxy(registry, rule)
    capsys.readouterr()
    code = main(["publish", str(archive), f"oci://{proxy.host}/releases", "--plain-http", "--timeout", "10"])
    _, err = lines_of(capsys)
    assert proxy.fired.is_set() and code == 1
    assert len(err) == 1 and "published 0 of 1" in err[0] and proxy.host in err[0], err

    registry.start()  # the same storage: what the dead registry had accepted
    tags = tag_digests(registry, ["releases/tinycnn"])
    assert not [tag for tag in tags if tag.endswith("linux-x86_64")], f"a tag names a partial artifact: {tags}"
    assert main(["publish", str(archive), f"oci://{registry.host}/releases", "--plain-http"]) == 0
    assert main(["pull", f"oci://{registry.host}/releases/tinycnn:1.0.0-linux-x86_64", "--plain-http",
                 "--out", str(tmp_path / "pulled"), "--public-key", str(matrix["public"])]) == 0
    assert (tmp_path / "pulled" / archive.name).read_bytes() == archive.read_bytes()


def test_basic_auth_and_tls_credentials_never_shown(capsys, matrix, tmp_path, monkeypatch):
    if shutil.which(SERVER) is None:
        unavailable(f"{SERVER} is not installed", "MODELPACK_REQUIRE_DOCKER")
    secret = "s3cret-Pa55word"
    registry = Registry(tmp_path / "registry", free_port(), user=("release", secret), tls=True)
    registry.folder.mkdir()
    registry.start()
    try:
        archive = matrix["packages"][0]
        base = ["publish", str(archive), f"oci://{registry.host}/secure"]
        monkeypatch.delenv("MODELPACK_REGISTRY_PASSWORD", raising=False)
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
        capsys.readouterr()
        attempts = [
            (base + ["--ca-file", str(registry.ca)], "asks for a user name and password"),
            (base + ["--username", "release"], "TLS verification failed"),
            (base + ["--plain-http", "--username", "release"], "Client sent an HTTP request to an HTTPS server"),
        ]
        for argv, needle in attempts:
            assert main(argv) == 1
            _, err = lines_of(capsys)
            assert len(err) == 1 and needle in err[0], (argv, err)
        monkeypatch.setenv("MODELPACK_REGISTRY_PASSWORD", "wrong")
        assert main(base + ["--ca-file", str(registry.ca), "--username", "release"]) == 1
        _, err = lines_of(capsys)
        assert len(err) == 1 and "401" in err[0], err
        monkeypatch.setenv("MODELPACK_REGISTRY_PASSWORD", secret)
        assert main(base + ["--ca-file", str(registry.ca), "--username", "release"]) == 0
        monkeypatch.delenv("MODELPACK_REGISTRY_PASSWORD")
        monkeypatch.setattr("sys.stdin", io.StringIO(secret + "\n"))
        assert main(["pull", f"oci://{registry.host}/secure/{archive.name.split('-1.0.0')[0]}:1.0.0-"
                             f"{'windows-x86_64' if 'windows' in archive.name else 'linux-x86_64'}",
                     "--ca-file", str(registry.ca), "--username", "release", "--password-stdin",
                     "--out", str(tmp_path / "pulled")]) == 0
        assert (tmp_path / "pulled" / archive.name).read_bytes() == archive.read_bytes()
        captured = capsys.readouterr()
        assert secret not in captured.out + captured.err
        status, _, _ = registry.get("_catalog")
        assert status == 200  # the API check itself authenticates
    finally:
        registry.kill()


def test_a_silent_registry_a_refusal_and_a_corrupt_blob_are_one_line_and_exit_1(capsys, matrix, registry, tmp_path):
    archive = matrix["packages"][0]
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        started = time.monotonic()
        assert main(["publish", str(archive), f"oci://127.0.0.1:{silent.getsockname()[1]}/r", "--plain-http",
                     "--timeout", "2"]) == 1
        assert time.monotonic() - started < 15
    _, err = lines_of(capsys)
    assert len(err) == 1 and "no answer in time" in err[0], err

    # a read-only registry refuses every push
    registry.kill()
    readonly = Registry(registry.folder, registry.port, readonly=True).start()
    try:
        assert main(["publish", str(archive), f"oci://{registry.host}/r", "--plain-http"]) == 1
        _, err = lines_of(capsys)
        assert len(err) == 1 and "HTTP 405" in err[0] and "published 0 of 1" in err[0], err
    finally:
        readonly.kill()

    registry.start()
    assert main(["publish", str(archive), f"oci://{registry.host}/r", "--plain-http"]) == 0
    out, _ = lines_of(capsys)
    repository_tag = out[0].split(" pushed ")[1].split(" ")[0].split("/", 1)[1]
    digest = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    blob = registry.storage / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("already here")
    assert main(["pull", f"oci://{registry.host}/{repository_tag}", "--plain-http", "--out", str(out_dir)]) == 1
    _, err = lines_of(capsys)
    assert len(err) == 1 and "the blob is corrupt" in err[0], err
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep.txt"]
    assert not list(tmp_path.glob(".out.modelpack-*")), "the staging folder is removed"

    # a referrer is an artifact, but not a package
    status, listing, _ = api_json(registry, f"{repository_tag.split(':')[0]}/tags/list")
    fallback = next(tag for tag in listing["tags"] if tag.startswith("sha256-"))
    status, index, _ = api_json(registry, f"{repository_tag.split(':')[0]}/manifests/{fallback}", INDEX)
    assert main(["pull", f"oci://{registry.host}/{repository_tag.split(':')[0]}@{index['manifests'][0]['digest']}",
                 "--plain-http", "--out", str(out_dir)]) == 1
    _, err = lines_of(capsys)
    assert len(err) == 1 and "not a modelpack package" in err[0], err


@pytest.mark.parametrize("argv, needle", [
    (["publish", "{dist}", "http://127.0.0.1:1/r"], "is not an oci://"),
    (["publish", "{dist}", "oci://127.0.0.1:1"], "names no repository"),
    (["publish", "{dist}", "oci://127.0.0.1:1/Upper"], "repository 'Upper' is not valid"),
    (["publish", "{dist}", "oci://127.0.0.1:1/r:-bad"], "tag '-bad' is not valid"),
    (["publish", "{dist}", "oci://127.0.0.1:1/r@sha256:12"], "is not sha256:"),
    (["publish", "{empty}", "oci://127.0.0.1:1/r"], "holds no package"),
    (["publish", "{corrupt}", "oci://127.0.0.1:1/r"], "corrupt.tar.gz"),
    (["pull", "oci://127.0.0.1:1/r", "--plain-http"], "names no tag or digest"),
    (["publish", "{dist}", "oci://127.0.0.1:1/r", "--password-stdin"], "--password-stdin: needs --username"),
])
def test_bad_references_and_packages_are_input_errors_before_any_push(capsys, matrix, tmp_path, argv, needle):
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copyfile(matrix["packages"][0], corrupt / "a.tar.gz")
    (corrupt / "corrupt.tar.gz").write_bytes(matrix["packages"][1].read_bytes()[:2000])
    paths = {"dist": matrix["dist"], "empty": tmp_path / "empty", "corrupt": corrupt}
    capsys.readouterr()
    assert main([arg.format(**paths) for arg in argv]) == 2
    _, err = lines_of(capsys)
    assert len(err) == 1 and needle in err[0], err
