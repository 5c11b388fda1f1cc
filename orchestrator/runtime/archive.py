"""Safe reading of package archives.

Archives come back from build hosts, which modelpack does not trust, and reach
devices by unknown routes, so extraction never uses ``tarfile.extractall``: every
member is checked (relative path, no ``..``, regular files and folders only: no links,
devices or FIFOs, no duplicates) and written by this code. Python 3.11.2, the build
images' version, predates tarfile's extraction filters, which is one more reason.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path, PurePosixPath

#: refuse archives that expand beyond this (a gzip bomb from a hostile host)
MAX_UNPACKED_BYTES = 32 << 30


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


def extract(archive: Path, dest: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> list[str]:
    """Extract a ``.tar.gz`` into the empty folder ``dest`` after checking every member.

    Returns the relative paths of the files written. Raises :class:`ArchiveError`.
    """
    dest = Path(dest)
    written: list[str] = []
    seen: set[str] = set()
    total = 0
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                rel = checked_member_path(member)
                key = rel.as_posix()
                if key in (".", ""):
                    continue
                if key in seen:
                    raise ArchiveError(f"member {key!r}: appears twice")
                seen.add(key)
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                total += member.size
                if total > max_bytes:
                    raise ArchiveError(f"member {key!r}: archive expands beyond {max_bytes} bytes")
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
