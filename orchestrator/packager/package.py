"""Package writer: layout, manifest with checksums, and a deterministic archive.

Determinism (sorted entries, fixed mtime/uid/gid/mode, gzip without a timestamp or
name) makes a package a pure function of its inputs: building the same model with the
same instructions on the same image gives a byte-identical file, so checksums can be
compared across machines and runs. For that reason the manifest holds no wall-clock
measurements; build timings travel in the job's result instead.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from ..runtime import MANIFEST
from ..runtime.manifest import Manifest
from ..runtime.checks import sha256_file
from ..runtime.engines import installed_version

RUNTIME_DIR = "runtime/modelpack_runtime"
_RUNTIME_SOURCE = Path(__file__).resolve().parent.parent / "runtime"


def file_table(root: Path) -> dict[str, str]:
    """sha256 of every file in the package except the manifest itself."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    manifest["files"] = file_table(root)
    Manifest.from_json(manifest)  # what every reader will check: a packager bug fails here, not on a device
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=True) + "\n"
    (root / MANIFEST).write_text(text, encoding="utf-8")


def add_runtime(root: Path, engines: list[str]) -> None:
    """Copy the runtime into the package with pinned requirements for its engines."""
    dest = root / RUNTIME_DIR
    dest.mkdir(parents=True)
    for source in sorted(_RUNTIME_SOURCE.glob("*.py")):
        shutil.copyfile(source, dest / source.name)
    pins = sorted({f"{dist}=={installed_version(dist)}" for dist in ["numpy", *engines] if installed_version(dist)})
    (root / "runtime" / "requirements.txt").write_text("\n".join(pins) + "\n")


def _tarinfo(name: str, size: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if size is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = size, 0o644
    return info


def write_archive(root: Path, dest: Path) -> None:
    """Write ``root`` as a deterministic ``.tar.gz`` at ``dest``."""
    entries = sorted(root.rglob("*"))
    with open(dest, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in entries:
                    name = path.relative_to(root).as_posix()
                    if path.is_dir():
                        tar.addfile(_tarinfo(name, None))
                    else:
                        with open(path, "rb") as data:
                            tar.addfile(_tarinfo(name, path.stat().st_size), data)
