"""Archives from hosts are untrusted: hostile members are refused, tampering is caught."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from orchestrator.collect import VerificationError, verify_archive
from orchestrator.runtime.archive import ArchiveError, extract
from orchestrator.transports.tarstream import pack, unpack_single_file


def make_tgz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    "members, problem",
    [
        ([(member("/etc/passwd"), b"x")], "absolute path"),
        ([(member("model/../../escape"), b"x")], "'..'"),
        ([(member("model/link", tarfile.SYMTYPE, "/etc/passwd"), None)], "links are not allowed"),
        ([(member("a"), b"x"), (member("b", tarfile.LNKTYPE, "a"), None)], "links are not allowed"),
        ([(member("dev", tarfile.CHRTYPE), None)], "only regular files"),
        ([(member("fifo", tarfile.FIFOTYPE), None)], "only regular files"),
        ([(member("a"), b"x"), (member("a"), b"y")], "appears twice"),
        ([(member("back\\slash"), b"x")], "invalid name"),
    ],
)
def test_hostile_members_are_refused_and_nothing_escapes(tmp_path, members, problem):
    archive = make_tgz(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match=problem.replace("(", r"\(").replace(".", r"\.")):
        extract(archive, dest)
    assert not (tmp_path / "escape").exists()


def test_corrupt_gzip_is_refused(tmp_path):
    good = make_tgz(tmp_path / "g.tar.gz", [(member("a"), b"hello" * 1000)])
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "corrupt.tar.gz"
    bad.write_bytes(bytes(data[: len(data) - 10]))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="corrupt archive"):
        extract(bad, dest)


def test_expansion_limit_stops_a_bomb(tmp_path):
    archive = make_tgz(tmp_path / "bomb.tar.gz", [(member("zeros"), bytes(1 << 20))])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="expands beyond"):
        extract(archive, dest, max_bytes=1000)


def _package(tmp_path: Path, files: dict[str, bytes], table: dict[str, str] | None = None,
             **changes) -> Path:
    import hashlib

    manifest = {
        "schema_version": 1, "name": "m", "version": "1",
        "target": {"name": "linux-x86_64", "os": "linux", "arch": "x86_64", "build_os": "linux",
                   "build_arch": "x86_64"},
        "source": {"sha256": "0" * 64}, "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3]}],
        "outputs": [], "artifacts": [{"path": "model/model.onnx", "format": "onnx", "engine": "onnxruntime",
                                      "role": "primary"}],
        "engines": {"onnxruntime": {"version": "1"}}, "selftest": {"passed": True, "artifacts": {}},
        "files": table if table is not None else {k: hashlib.sha256(v).hexdigest() for k, v in files.items()},
    }
    manifest.update(changes)
    members = [(member("manifest.json"), json.dumps(manifest).encode())]
    members += [(member(name), data) for name, data in files.items()]
    return make_tgz(tmp_path / "pkg.tar.gz", members)


def test_verify_accepts_a_consistent_package(tmp_path):
    archive = _package(tmp_path, {"model/model.onnx": b"weights", "samples/input-0.npy": b"x"})
    assert verify_archive(archive)["name"] == "m"


def test_verify_catches_a_modified_file(tmp_path):
    import hashlib

    files = {"model/model.onnx": b"tampered"}
    archive = _package(tmp_path, files, {"model/model.onnx": hashlib.sha256(b"original").hexdigest()})
    with pytest.raises(VerificationError, match="model/model.onnx: sha256"):
        verify_archive(archive)


def test_verify_catches_an_unlisted_file(tmp_path):
    archive = _package(tmp_path, {"a": b"1"}, table={})
    with pytest.raises(VerificationError, match="not listed in manifest"):
        verify_archive(archive)


def test_verify_checks_the_archive_checksum(tmp_path):
    archive = _package(tmp_path, {"a": b"1"})
    with pytest.raises(VerificationError, match="differs from the packager's"):
        verify_archive(archive, expected_sha256="0" * 64)


def test_single_file_transfer_round_trip_and_refusals(tmp_path):
    source = tmp_path / "pkg.tar.gz"
    source.write_bytes(b"payload" * 100)
    with pack({"pkg.tar.gz": source}) as stream:
        data = stream.read()
    unpack_single_file([data[:100], data[100:]], "pkg.tar.gz", tmp_path / "copy", max_bytes=1 << 20)
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()

    link = io.BytesIO()
    with tarfile.open(fileobj=link, mode="w") as tar:
        tar.addfile(member("pkg.tar.gz", tarfile.SYMTYPE, "/etc/shadow"))
    with pytest.raises(ArchiveError, match="links are not allowed"):
        unpack_single_file([link.getvalue()], "pkg.tar.gz", tmp_path / "x", max_bytes=1 << 20)
    with pytest.raises(ArchiveError, match="exceeds"):
        unpack_single_file([data], "pkg.tar.gz", tmp_path / "y", max_bytes=10)


@pytest.mark.parametrize("changes, where", [
    ({"inputs": [{"name": "x", "shape": [1, 3]}]}, "manifest.inputs[0].dtype: missing"),
    ({"inputs": [{"name": "x", "dtype": "float32", "shape": "1x3"}]}, "manifest.inputs[0].shape: expected a list"),
    ({"artifacts": "model/model.onnx"}, "manifest.artifacts: expected a list"),
    ({"artifacts": []}, "artifacts: empty"),
    ({"target": {"name": "linux-x86_64"}}, "manifest.target.os: missing"),
    ({"engines": {"onnxruntime": "1.20"}}, "manifest.engines.onnxruntime: expected an object"),
    ({"selftest": {"passed": "yes", "artifacts": {}}}, "manifest.selftest.passed: expected bool"),
    ({"schema_version": 2}, "schema_version: 2 is not supported"),
])
def test_a_malformed_manifest_is_one_line_naming_the_key_not_a_crash(tmp_path, capsys, changes, where):
    """Every reader sees the manifest through one typed definition, checked on read
    (runtime/manifest.py): a package from a broken or hostile host is refused with the
    key that is wrong (#17), by inspect (exit 2) as by the controller's verification."""
    from orchestrator.cli import main

    archive = _package(tmp_path, {"model/model.onnx": b"weights"}, **changes)
    with pytest.raises(VerificationError, match=re.escape(where)):
        verify_archive(archive)
    assert main(["inspect", str(archive)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and where in err[0] and "pkg.tar.gz" in err[0]


# -- nothing is written before the whole archive is checked (issue 14) ---------------------
def test_many_unlisted_members_are_refused_before_any_is_written(tmp_path):
    archive = _package(tmp_path, {"model/model.onnx": b"weights"})
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    members += [(member(f"junk/{i}"), b"") for i in range(5000)]
    hostile = make_tgz(tmp_path / "junk.tar.gz", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="junk/0: present but not listed"):
        extract(hostile, dest)
    assert not any(dest.iterdir()), "members were written before the archive was rejected"


def test_a_bomb_listed_under_a_wrong_checksum_writes_nothing(tmp_path):
    """A member the manifest lists, but whose bytes are not the listed ones (here, a
    highly compressible blob far larger than the archive): refused before writing."""
    archive = _package(tmp_path, {"model/model.onnx": bytes(64 << 20)},
                       table={"model/model.onnx": "0" * 64})
    assert archive.stat().st_size < 1 << 20
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="model/model.onnx: sha256"):
        extract(archive, dest)
    assert not any(dest.iterdir())


def test_an_archive_without_a_manifest_or_with_too_many_members_is_refused(tmp_path):
    plain = make_tgz(tmp_path / "plain.tar.gz", [(member("a"), b"x")])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="no manifest.json"):
        extract(plain, dest)
    many = make_tgz(tmp_path / "many.tar.gz", [(member(f"m{i}"), b"") for i in range(60)])
    with pytest.raises(ArchiveError, match="more than 50 members"):
        extract(many, dest, max_members=50)
    assert not any(dest.iterdir())


def test_an_archive_larger_than_the_free_space_is_refused_up_front(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    archive = _package(tmp_path, {"model/model.onnx": bytes(1 << 20)})
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - 4096, 4096))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match=r"needs 10\d{5} bytes; .* has 4096 free"):
        extract(archive, dest)
    assert not any(dest.iterdir())


def test_a_host_cannot_send_more_than_the_packager_reported(tmp_path):
    """pull() is bounded by the size the packager reported: a file that grew after it was
    reported (or a lying result) is refused, and nothing is left at the destination."""
    from orchestrator.inventory import Host
    from orchestrator.transports.base import TransportError
    from orchestrator.transports.local import LocalTransport

    transport = LocalTransport(Host(name="here", transport="local", targets=["linux-x86_64"]))
    workspace = transport.open("local", {})
    try:
        (Path(workspace.root) / "out").mkdir(parents=True, exist_ok=True)
        (Path(workspace.root) / "out" / "pkg.tar.gz").write_bytes(bytes(4096))
        with pytest.raises(TransportError, match="larger than the 100 bytes"):
            workspace.pull("out/pkg.tar.gz", tmp_path / "pkg.tar.gz", 100)
        assert not (tmp_path / "pkg.tar.gz").exists()
        workspace.pull("out/pkg.tar.gz", tmp_path / "pkg.tar.gz", 4096)
        assert (tmp_path / "pkg.tar.gz").stat().st_size == 4096
    finally:
        workspace.close()
