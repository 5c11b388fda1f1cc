"""The package cache: an unchanged model costs seconds, a changed one is rebuilt, and
the cache survives concurrent writers, crashes and corruption."""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

from orchestrator.cache import PackageCache
from orchestrator.cli import main


def build(capsys, spec: Path, hosts: Path, out: Path, *extra: str) -> dict:
    assert main(["build", str(spec), "--hosts", str(hosts), "--out", str(out), *extra]) == 0, capsys.readouterr()
    capsys.readouterr()
    return json.loads((out / "summary.json").read_text())


def test_unchanged_rerun_is_served_from_cache_and_changes_rebuild(capsys, write_spec, local_hosts, tmp_path,
                                                                   private_cache):
    spec = write_spec()
    first = build(capsys, spec, local_hosts, tmp_path / "a")
    assert first["jobs"][0]["cached"] is False and len(first["jobs"][0]["attempts"]) == 1
    second = build(capsys, spec, local_hosts, tmp_path / "b")
    job = second["jobs"][0]
    assert job["cached"] is True and job["attempts"] == [] and job["sha256"] == first["jobs"][0]["sha256"]
    name = "tinycnn-1.0.0-linux-x86_64.tar.gz"
    assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()

    spec.write_text(spec.read_text() + "tolerance: {atol: 0.01}\n")
    changed = build(capsys, spec, local_hosts, tmp_path / "c")
    assert changed["jobs"][0]["cached"] is False, "other instructions, other key"
    rebuilt = build(capsys, spec, local_hosts, tmp_path / "d", "--rebuild")
    assert rebuilt["jobs"][0]["cached"] is False
    assert build(capsys, spec, local_hosts, tmp_path / "e")["jobs"][0]["cached"] is True


def test_no_cache_neither_reads_nor_writes(capsys, write_spec, local_hosts, tmp_path, private_cache):
    spec = write_spec()
    build(capsys, spec, local_hosts, tmp_path / "a", "--no-cache")
    assert not private_cache.exists() or not [p for p in private_cache.iterdir() if p.is_dir()]


def test_corrupted_entry_is_a_miss_and_gets_replaced(capsys, write_spec, local_hosts, tmp_path, private_cache):
    spec = write_spec()
    build(capsys, spec, local_hosts, tmp_path / "a")
    [entry] = [p for p in private_cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    package = next(entry.glob("*.tar.gz"))
    package.write_bytes(package.read_bytes()[:-100])
    again = build(capsys, spec, local_hosts, tmp_path / "b")
    assert again["jobs"][0]["cached"] is False
    assert build(capsys, spec, local_hosts, tmp_path / "c")["jobs"][0]["cached"] is True


def test_concurrent_writers_and_a_crash_mid_write(capsys, write_spec, local_hosts, tmp_path):
    spec = write_spec()
    build(capsys, spec, local_hosts, tmp_path / "a", "--no-cache")
    package = tmp_path / "a" / "tinycnn-1.0.0-linux-x86_64.tar.gz"
    sha = json.loads((tmp_path / "a" / "summary.json").read_text())["jobs"][0]["sha256"]
    cache = PackageCache(tmp_path / "shared")
    (tmp_path / "shared" / ".incoming-crashed").mkdir()  # what a crash mid-write leaves
    threads = [threading.Thread(target=cache.put, args=("k" * 64, package, sha)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hit = cache.get("k" * 64)
    assert hit is not None and hit.sha256 == sha
    assert cache.get("x" * 64) is None
    assert sorted(p.name for p in (tmp_path / "shared").iterdir() if not p.name.startswith(".")) == ["k" * 64]


def test_junit_has_one_testcase_per_job(capsys, write_spec, local_hosts, tmp_path):
    spec = write_spec()
    build(capsys, spec, local_hosts, tmp_path / "a")
    suite = ET.parse(tmp_path / "a" / "junit.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "1" and suite.get("failures") == "0"
    [case] = suite.findall("testcase")
    assert case.get("classname") == "tinycnn" and case.get("name") == "linux-x86_64"


def test_a_cache_entry_holding_another_jobs_package_is_never_published(capsys, write_spec, local_hosts, tmp_path,
                                                                       private_cache):
    """A replaced entry (another name, version, target or instructions, with a
    self-consistent sha256) is a miss, rebuilt, and replaced; and an entry naming a file
    outside its own folder is not read."""
    spec = write_spec()
    build(capsys, spec, local_hosts, tmp_path / "a")
    [entry] = [p for p in private_cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    other = write_spec(name="impostor", version="6.6.6")
    build(capsys, other, local_hosts, tmp_path / "x", "--no-cache")
    foreign = tmp_path / "x" / "impostor-6.6.6-linux-x86_64.tar.gz"
    for old in entry.glob("*.tar.gz"):
        old.unlink()
    (entry / foreign.name).write_bytes(foreign.read_bytes())
    foreign_sha = json.loads((tmp_path / "x" / "summary.json").read_text())["jobs"][0]["sha256"]
    (entry / "entry.json").write_text(json.dumps({"package": foreign.name, "sha256": foreign_sha}))

    again = build(capsys, write_spec(), local_hosts, tmp_path / "b")
    assert again["jobs"][0]["cached"] is False
    from orchestrator.runtime.archive import extract
    extract(tmp_path / "b" / "tinycnn-1.0.0-linux-x86_64.tar.gz", tmp_path / "unpacked")
    assert json.loads((tmp_path / "unpacked" / "manifest.json").read_text())["name"] == "tinycnn"
    assert build(capsys, spec, local_hosts, tmp_path / "c")["jobs"][0]["cached"] is True, "the foreign entry was replaced"

    (entry / "entry.json").write_text(json.dumps({"package": f"../../a/{foreign.name}", "sha256": foreign_sha}))
    assert PackageCache(private_cache).get(entry.name) is None


def test_a_host_returning_another_jobs_package_is_refused(capsys, write_spec, local_hosts, tmp_path):
    from orchestrator.collect import VerificationError, verify_archive
    from orchestrator.plan import plan
    from orchestrator.spec import load_spec

    build(capsys, write_spec(name="impostor"), local_hosts, tmp_path / "x", "--no-cache")
    package = tmp_path / "x" / "impostor-1.0.0-linux-x86_64.tar.gz"
    [job] = plan([load_spec(write_spec())])
    try:
        verify_archive(package, None, job.identity())
    except VerificationError as exc:
        assert "not this job's package: name 'impostor' (the job's is 'tinycnn')" in str(exc)
    else:
        raise AssertionError("another job's package was accepted")
    [changed] = plan([load_spec(write_spec(name="impostor", tolerance={"atol": 0.5}))])
    try:
        verify_archive(package, None, changed.identity())
    except VerificationError as exc:
        assert "instructions sha256" in str(exc) and "name" not in str(exc).split("package:")[1]
    else:
        raise AssertionError("a package built from other instructions was accepted")
    [same] = plan([load_spec(write_spec(name="impostor"))])
    assert verify_archive(package, None, same.identity())["name"] == "impostor"
