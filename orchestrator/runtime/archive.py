"""Safe reading of package archives.

Archives come back from build hosts, which modelpack does not trust, and reach
devices by unknown routes, so extraction never uses ``tarfile.extractall``: every
member is checked (relative path, no ``..``, regular files and folders only: no links,
devices or FIFOs, no duplicates), and every file against the manifest's sha256 table,
before anything is written, by this code. Python 3.11.2, the build
images' version, predates tarfile's extraction filters, which is one more reason.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .checks import file_problems
from .signature import ATTESTATIONS

#: refuse archives that expand beyond this (a gzip bomb from a hostile host)
MAX_UNPACKED_BYTES = 32 << 30
#: refuse archives with more members than this (a package has tens to hundreds)
MAX_MEMBERS = 20000
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20


class ArchiveError(ValueError):
    """The archive is corrupt or hostile; the message names the member and the problem."""


def checked_member_path(member: tarfile.TarInfo) -> PurePosixPath:
    name = member.name
    if not name or "\x00" in name or "\\" in name:
        raise ArchiveError(f"member {name!r}: invalid name")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise ArchiveError(f"member {name!r}: absolute path")
    if any(part == ".." for part in path.parts):
        raise ArchiveError(f"member {name!r}: path escapes the package ('..')")
    if member.issym() or member.islnk():
        raise ArchiveError(f"member {name!r}: links are not allowed (points to {member.linkname!r})")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"member {name!r}: only regular files and folders are allowed")
    return path


@dataclass
class _Survey:
    """What a first, read-only pass found: every file's size and sha256, the manifest."""

    sizes: dict[str, int] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    manifest: bytes | None = None


def _survey(tar: tarfile.TarFile, max_bytes: int, max_members: int) -> _Survey:
    """Check every member and hash every file without writing anything: a hostile
    archive is refused before it costs disk space."""
    found = _Survey()
    seen: set[str] = set()
    total = 0
    for count, member in enumerate(tar, 1):
        if count > max_members:
            raise ArchiveError(f"more than {max_members} members; a package has far fewer")
        key = checked_member_path(member).as_posix()
        if key in (".", ""):
            continue
        if key in seen:
            raise ArchiveError(f"member {key!r}: appears twice")
        seen.add(key)
        if member.isdir():
            continue
        total += member.size  # the header's size, known before its data is read
        if total > max_bytes:
            raise ArchiveError(f"member {key!r}: archive expands beyond {max_bytes} bytes")
        source = tar.extractfile(member)
        assert source is not None  # regular file, checked above
        digest = hashlib.sha256()
        with source:
            if key == MANIFEST_NAME and member.size <= MAX_MANIFEST_BYTES:
                found.manifest = source.read()
                digest.update(found.manifest)
            else:
                while block := source.read(1 << 20):
                    digest.update(block)
        found.sizes[key], found.hashes[key] = member.size, digest.hexdigest()
    return found


def _check_against_manifest(found: _Survey) -> None:
    """The archive's files must be exactly the manifest's table, byte for byte."""
    if found.manifest is None:
        raise ArchiveError(f"no {MANIFEST_NAME} (or one over {MAX_MANIFEST_BYTES} bytes); not a modelpack package")
    try:
        table = json.loads(found.manifest.decode("utf-8"))["files"]
        expected = {str(name): str(sha) for name, sha in table.items()}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{MANIFEST_NAME}: no readable file table ({type(exc).__name__}: {exc})") from None
    problems = file_problems(expected, {k: v for k, v in found.hashes.items()
                                        if k != MANIFEST_NAME and k not in ATTESTATIONS})
    if problems:
        raise ArchiveError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def extract(archive: Path, dest: Path, max_bytes: int = MAX_UNPACKED_BYTES,
            max_members: int = MAX_MEMBERS) -> list[str]:
    """Extract a package ``.tar.gz`` into the empty folder ``dest``.

    Two passes: the first checks every member, hashes every file and compares them with
    the manifest's table, and the space they need with the space ``dest`` has; only then
    does the second write them. Returns the relative paths of the files written. Raises
    :class:`ArchiveError`.
    """
    dest = Path(dest)
    written: list[str] = []
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            found = _survey(tar, max_bytes, max_members)
        _check_against_manifest(found)
        existing = next(p for p in [dest, *dest.parents] if p.exists())
        need, free = sum(found.sizes.values()), shutil.disk_usage(existing).free
        if need > free:
            raise ArchiveError(f"unpacking needs {need} bytes; {dest} has {free} free")
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                rel = checked_member_path(member)
                key = rel.as_posix()
                if key in (".", ""):
                    continue
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if found.sizes.get(key) != member.size:
                    raise ArchiveError(f"member {key!r}: changed between the check and extraction")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular file, checked above
                with source, open(target, "xb") as out:
                    while block := source.read(1 << 20):
                        out.write(block)
                written.append(key)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileExistsError):
            raise ArchiveError(f"member {exc.filename!r}: clashes with another member") from None
        raise ArchiveError(f"corrupt archive: {exc}") from None
    return written
