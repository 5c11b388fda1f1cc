"""The package runtime: one load/run API over every engine a package may carry.

This folder is copied into every package as ``runtime/modelpack_runtime`` and must run
on a device that has only Python, NumPy and the package's engine. It imports nothing
outside itself. Typical use on a device::

    import sys; sys.path.insert(0, "mypkg/runtime")
    import modelpack_runtime
    session = modelpack_runtime.load("mypkg")
    outputs = session.run({"x": array})
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .checks import (
    Comparison,
    compare_outputs,
    engine_version_problem,
    file_problems,
    platform_problem,
    sha256_file,
)
from .engines import ENGINES, EngineUnavailable, installed_version, open_artifact

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1

__all__ = ["PackageError", "Session", "TensorSpec", "load", "read_manifest", "MANIFEST"]


class PackageError(RuntimeError):
    """The package cannot be used here; the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TensorSpec":
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


def read_manifest(package_dir: Path) -> dict[str, Any]:
    path = Path(package_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{path}: not found; this is not a modelpack package") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: not valid JSON: {exc}") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise PackageError(
            f"{path}: schema_version {manifest.get('schema_version')!r} is not supported"
            f" by this runtime (supports {SCHEMA_VERSION})"
        )
    return manifest


def verify_files(package_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Raise unless every file under ``package_dir`` matches the manifest's sha256 table."""
    root = Path(package_dir)
    actual = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts
    }
    problems = file_problems(manifest["files"], actual)
    if problems:
        raise PackageError(f"{root}: integrity check failed: {problems[0]}"
                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


class Session:
    """A loaded package artifact; ``run`` validates feeds against the signature."""

    def __init__(self, package_dir: Path, manifest: dict[str, Any], artifact: Mapping[str, Any]) -> None:
        self.package_dir = Path(package_dir)
        self.manifest = manifest
        self.artifact = dict(artifact)
        self.inputs = [TensorSpec.from_json(t) for t in manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(t) for t in manifest["outputs"]]
        self._runner = open_artifact(artifact["engine"], self.package_dir / artifact["path"],
                                     artifact.get("runtime", {}))

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = {t.name: t for t in self.inputs}
        missing = sorted(set(expected) - set(feeds))
        extra = sorted(set(feeds) - set(expected))
        if missing or extra:
            raise PackageError(
                f"inputs do not match the package signature: missing {missing}, unexpected {extra}"
            )
        checked = {}
        for name, value in feeds.items():
            spec, array = expected[name], np.asarray(value)
            if array.dtype != np.dtype(spec.dtype):
                raise PackageError(f"input {name!r} has dtype {array.dtype}, the package needs {spec.dtype}")
            fixed = [d if isinstance(d, int) else None for d in spec.shape]
            if len(fixed) != array.ndim or any(d is not None and d != n for d, n in zip(fixed, array.shape)):
                raise PackageError(
                    f"input {name!r} has shape {list(array.shape)}, the package needs {list(spec.shape)}"
                )
            checked[name] = array
        return checked

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        produced = self._runner.run(self._check_feeds(feeds))
        missing = [t.name for t in self.outputs if t.name not in produced]
        if missing:
            raise PackageError(f"the engine produced no output named {missing}")
        return {t.name: produced[t.name] for t in self.outputs}

    def self_test(self) -> Comparison:
        """Run the golden samples shipped in the package and compare with the
        reference outputs under the tolerance recorded at build time."""
        samples = self.manifest["samples"]
        feeds = {name: np.load(self.package_dir / rel) for name, rel in samples["inputs"].items()}
        reference = {name: np.load(self.package_dir / rel) for name, rel in samples["reference"].items()}
        tolerance = self.manifest["tolerance"]
        return compare_outputs(self.run(feeds), reference, tolerance["atol"], tolerance["rtol"])


def artifacts_for(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The runnable artifacts of a package, primary first."""
    runnable = [a for a in manifest["artifacts"] if a["role"] in ("primary", "alternate")]
    return sorted(runnable, key=lambda a: a["role"] != "primary")


def load(package_dir: str | Path, artifact: str | None = None, verify: bool = True) -> Session:
    """Open a package directory for inference on this machine.

    Checks, in order, the file checksums, that this machine can run the package's
    target, and that the installed engine is compatible with the one that built it,
    and raises :class:`PackageError` naming the first problem found.
    """
    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    if verify:
        verify_files(package_dir, manifest)
    problem = platform_problem(manifest["target"])
    if problem:
        raise PackageError(problem)
    candidates = artifacts_for(manifest)
    if artifact is not None:
        candidates = [a for a in candidates if a["path"] == artifact]
        if not candidates:
            raise PackageError(f"package has no runnable artifact {artifact!r}")
    chosen = candidates[0]
    engine = manifest["engines"][chosen["engine"]]
    if chosen["engine"] not in ENGINES:
        raise PackageError(f"engine {chosen['engine']!r} is not supported by this runtime")
    problem = engine_version_problem(
        chosen["engine"], engine["version"], installed_version(ENGINES[chosen["engine"]][0])
    )
    if problem:
        raise PackageError(problem)
    try:
        return Session(package_dir, manifest, chosen)
    except EngineUnavailable as exc:
        raise PackageError(str(exc)) from None
