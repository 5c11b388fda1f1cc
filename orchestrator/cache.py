"""Content-addressed store of finished packages: an unchanged model costs seconds.

The key covers everything that decides a package's content: the model's and samples'
bytes, the per-target packaging instructions, the build environment (the Docker
image id, or the local interpreter and engine versions) and the packager's own code.
A hit is verified again (sha256 and every file against its manifest) before it is
republished, so a corrupted cache is a miss, never a bad package.

Entries are written into a private temporary folder and renamed into place, so a crash
mid-write leaves no entry; a lock file serialises writers and evictions across
concurrent runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .collect import Identity, VerificationError, verify_archive
from .runtime.checks import sha256_file
from .storage import write_atomic

ENTRY = "entry.json"


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of a canonical JSON rendering of everything that decides the package."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Hit:
    key: str
    package: Path
    sha256: str
    manifest: dict[str, Any]


class PackageCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get(self, key: str, identity: Identity | None = None) -> Hit | None:
        """The entry under ``key`` if it is intact and, given ``identity``, that job's
        package; anything else is a miss. The entry names a file in its own folder only."""
        folder = self.root / key
        try:
            entry = json.loads((folder / ENTRY).read_text())
            name = entry["package"]
            if not isinstance(name, str) or Path(name).name != name or name in (".", "..", ENTRY):
                raise VerificationError(f"entry names {name!r}, not a file of its own")
            package = folder / name
            if package.is_symlink() or sha256_file(package) != entry["sha256"]:
                raise VerificationError("sha256 mismatch")
            manifest = verify_archive(package, entry["sha256"], identity)
        except (OSError, ValueError, KeyError, TypeError, VerificationError):
            return None  # absent or damaged: a miss, and the next build replaces it
        return Hit(key, package, entry["sha256"], manifest)

    def put(self, key: str, package: Path, sha256: str, identity: Identity | None = None) -> None:
        """Store a verified package under ``key`` (atomically; the first writer of a
        sound entry wins, and a damaged or foreign one is replaced)."""
        scratch = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            shutil.copyfile(package, scratch / package.name)
            (scratch / ENTRY).write_text(json.dumps({"package": package.name, "sha256": sha256}))
            with self._locked():
                dest = self.root / key
                if dest.exists():
                    if self.get(key, identity) is not None:
                        return
                    shutil.rmtree(dest)  # a damaged entry: replace it
                os.rename(scratch, dest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def copy_to(self, hit: Hit, dest: Path) -> None:
        shutil.copyfile(hit.package, dest)


class DurationHistory:
    """How long each job took last time it was really built, so the scheduler can
    start the longest first (longest-processing-time order shortens the makespan).
    Jobs never seen run first: their length is unknown, so assume the worst."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.seconds: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.seconds = {}

    def longest_first(self, jobs: list[Any]) -> list[Any]:
        return sorted(jobs, key=lambda job: -self.seconds.get(job.id, float("inf")))

    def record(self, records: list[Any]) -> None:
        built = {r.job.id: round(r.finished - r.started, 3) for r in records
                 if r.status == "built" and not r.cached and r.started and r.finished}
        if not built:
            return
        self.seconds.update(built)
        write_atomic(self.path, json.dumps(self.seconds, sort_keys=True))
