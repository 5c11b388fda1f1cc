"""Tar streams for moving files through the Docker engine's container archive API."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import IO, Iterable, Mapping

from ..runtime.archive import ArchiveError, checked_member_path

_SPOOL = 64 << 20  # build small payloads in memory, larger ones on disk


def pack(files: Mapping[str, Path]) -> IO[bytes]:
    """A tar of ``{relative name: local file}``, rewound, ready to stream."""
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL)
    with tarfile.open(fileobj=spool, mode="w") as tar:
        for name, path in sorted(files.items()):
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as data:
                tar.addfile(info, data)
    spool.seek(0)
    return spool


def unpack_single_file(chunks: Iterable[bytes], name: str, dest: Path, max_bytes: int) -> None:
    """Write the one regular file called ``name`` out of a tar stream to ``dest``.

    The stream comes from a host modelpack does not trust: anything other than exactly
    that one regular file (a link, a device, a path with '..', extra members, or more
    than ``max_bytes``) is refused.
    """
    with tempfile.TemporaryFile() as spool:
        total = 0
        for chunk in chunks:
            total += len(chunk)
            if total > max_bytes + (1 << 20):
                raise ArchiveError(f"{name}: transfer exceeds {max_bytes} bytes")
            spool.write(chunk)
        spool.seek(0)
        try:
            with tarfile.open(fileobj=spool, mode="r:") as tar:
                members = tar.getmembers()
                if len(members) != 1:
                    raise ArchiveError(f"{name}: expected one file, got {len(members)} entries")
                member = members[0]
                checked_member_path(member)
                if not member.isfile() or Path(member.name).name != name:
                    raise ArchiveError(f"{name}: expected a regular file named {name!r}, got {member.name!r}")
                if member.size > max_bytes:
                    raise ArchiveError(f"{name}: transfer exceeds {max_bytes} bytes")
                source = tar.extractfile(member)
                assert source is not None
                with source, open(dest, "xb") as out:
                    while block := source.read(1 << 20):
                        out.write(block)
        except tarfile.TarError as exc:
            raise ArchiveError(f"{name}: corrupt transfer: {exc}") from None
