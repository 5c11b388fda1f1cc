"""Collection: check what a host sent back, then publish it atomically.

A package is verified before anyone sees it: the archive's sha256 against the one the
packager reported, every member against the extraction rules, and every file against
the manifest's checksum table. Only then is it renamed into ``--out``, so the output
folder never holds a partial or unverified file and a failed job overwrites nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .runtime import PackageError, read_manifest
from .runtime.archive import ArchiveError, extract
from .runtime.checks import sha256_file

_REQUIRED = ("name", "version", "target", "source", "inputs", "outputs", "artifacts", "files", "selftest")


class VerificationError(RuntimeError):
    """The package from a host is corrupt, hostile or inconsistent."""


@dataclass(frozen=True)
class Identity:
    """What a package must say it is to be published as a job's: a host or a cache entry
    that hands back another model's, target's or instructions' package (by mistake or on
    purpose) must not have it published under this job's name."""

    name: str
    version: str
    target: str
    model_sha256: str
    instructions_sha256: str

    def problem(self, manifest: Mapping[str, Any]) -> str | None:
        said = {"name": manifest["name"], "version": manifest["version"], "target": manifest["target"]["name"],
                "source model sha256": manifest["source"]["sha256"],
                "instructions sha256": manifest["source"].get("instructions_sha256")}
        wanted = dict(zip(said, (self.name, self.version, self.target, self.model_sha256, self.instructions_sha256)))
        wrong = [f"{key} {said[key]!r} (the job's is {wanted[key]!r})" for key in said if said[key] != wanted[key]]
        return f"not this job's package: {'; '.join(wrong)}" if wrong else None


def verify_archive(archive: Path, expected_sha256: str | None = None,
                   identity: Identity | None = None, into: Path | None = None) -> dict[str, Any]:
    """Check a package archive completely, and that it is ``identity``'s package when
    given; return its manifest. The checked files are left in ``into`` when given (a
    caller that runs the package need not extract it twice)."""
    if expected_sha256 is not None:
        actual = sha256_file(archive)
        if actual != expected_sha256:
            raise VerificationError(f"{archive.name}: sha256 {actual} differs from the packager's {expected_sha256}")
    with contextlib.ExitStack() as stack:
        folder = into or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="modelpack-verify-")))
        try:
            extract(archive, folder)  # checks every file against the table before writing
            manifest = read_manifest(folder)
        except (ArchiveError, PackageError) as exc:
            raise VerificationError(f"{archive.name}: {exc}") from None
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise VerificationError(f"{archive.name}: manifest.json lacks {', '.join(missing)}")
    problem = identity.problem(manifest) if identity else None
    if problem:
        raise VerificationError(f"{archive.name}: {problem}")
    return manifest


def staging_dir(out_dir: Path) -> Path:
    """A private folder beside ``out_dir`` (same filesystem, so publishing is a rename)."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.modelpack-", dir=out_dir.parent))


def publish(files: list[tuple[Path, str]], out_dir: Path) -> list[Path]:
    """Move verified files from :func:`staging_dir` into ``out_dir`` under the given
    names, together: each rename is atomic (readers see the old file or the new one, never
    a partial one), and if one fails, those already made are undone and the files they
    replaced restored, so a package and its .zip twin appear together or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[tuple[Path, Path | None]] = []
    try:
        for staged, name in files:
            dest = out_dir / name
            previous = None
            if dest.is_file():
                previous = staged.with_name(staged.name + ".previous")
                os.link(dest, previous)  # same filesystem (staging is beside out_dir)
            os.replace(staged, dest)
            done.append((dest, previous))
    except OSError:
        for dest, previous in reversed(done):
            if previous is not None:
                os.replace(previous, dest)
            else:
                dest.unlink(missing_ok=True)
        raise
    finally:
        for _, previous in done:
            if previous is not None:
                previous.unlink(missing_ok=True)
    return [out_dir / name for _, name in files]


#: a zip's timestamps cannot precede 1980; a fixed one keeps the .zip reproducible
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def zip_twin_name(package_filename: str) -> str:
    """The name of a package's .zip twin (Windows users expect a .zip)."""
    return package_filename.removesuffix(".tar.gz") + ".zip"


def zip_from_archive(archive: Path, dest: Path) -> None:
    """Write the files of a verified package archive as a deterministic .zip (sorted
    entries, fixed timestamps, modes kept). Made here from what was verified, never
    taken from a host, so it needs no checks of its own."""
    with tarfile.open(archive, "r:gz") as tar, zipfile.ZipFile(dest, "x", zipfile.ZIP_DEFLATED) as out:
        for member in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
            info = zipfile.ZipInfo(member.name, date_time=_ZIP_TIME)
            info.external_attr = (0o100000 | (member.mode & 0o777)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            source = tar.extractfile(member)
            assert source is not None
            with source, out.open(info, "w") as target:
                shutil.copyfileobj(source, target, 1 << 20)
