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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


def _compile_own_modules_from_source() -> None:
    """Make this package's modules load from their checked sources only.

    Python prefers ``__pycache__/*.pyc`` to the source, and an unchecked hash-based .pyc
    is run without a glance at the source: a package that ships one runs code no checksum
    covers. So, when this folder is imported from a package (as ``modelpack_runtime``), its
    modules are compiled from source, never from bytecode, and none is written; the .pyc
    that importing this file may just have written is removed, so that the package still
    matches its manifest afterwards. (A planted ``__init__`` .pyc runs before this code
    can; ``modelpack verify``, which never imports the package, refuses any of them.)"""
    import importlib.abc
    import importlib.machinery
    import importlib.util

    folder = Path(__file__).parent

    class SourceOnly(importlib.machinery.SourceFileLoader):
        def get_code(self, fullname: str) -> Any:
            return compile(self.get_data(self.path), self.path, "exec", dont_inherit=True)

    class OwnModules(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
            package, _, leaf = fullname.rpartition(".")
            source = folder / f"{leaf}.py"
            if package != __name__ or not source.is_file():
                return None
            return importlib.util.spec_from_file_location(fullname, source, loader=SourceOnly(fullname, str(source)))

    sys.meta_path.insert(0, OwnModules())
    cached = Path(globals().get("__cached__") or folder / "__pycache__" / "none")
    try:
        cached.unlink(missing_ok=True)
        cached.parent.rmdir()
    except OSError:  # read-only, or other files there: the manifest check names them
        pass


if __name__ == "modelpack_runtime":
    _compile_own_modules_from_source()

import numpy as np  # noqa: E402

from .checks import (  # noqa: E402
    Comparison,
    Tolerance,
    compare_outputs,
    engine_version_problem,
    file_problems,
    platform_problem,
    sha256_file,
)
from .engines import ENGINES, EngineUnavailable, installed_version, open_artifact  # noqa: E402
from .manifest import Manifest  # noqa: E402
from .schema import SchemaError  # noqa: E402
from .signature import ATTESTATIONS, SignatureError, verify_signature  # noqa: E402

MANIFEST = "manifest.json"

__all__ = ["PackageError", "Session", "TensorSpec", "load", "read_manifest", "MANIFEST", "Manifest"]


class PackageError(RuntimeError):
    """The package cannot be used here; the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. ``shape`` holds sizes and, for dynamic dimensions, names;
    ``range`` gives per axis the sizes a dynamic dimension accepts: None (fixed, or no
    limit recorded), or ``[min, max]`` with ``max`` None for no upper limit."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    range: tuple[tuple[int, int | None] | None, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TensorSpec":
        ranges = tuple(tuple(r) if r is not None else None for r in data.get("range", ()))
        return cls(data["name"], data["dtype"], tuple(data["shape"]), ranges)

    def shape_problem(self, shape: tuple[int, ...], symbols: dict[str, int]) -> str | None:
        """Why an array of ``shape`` cannot be this input, or None. ``symbols`` collects
        the sizes of named dimensions, which must agree across inputs."""
        if len(shape) != len(self.shape):
            return f"input {self.name!r} has rank {len(shape)}, the package needs {_show_shape(self)}"
        for axis, (want, got) in enumerate(zip(self.shape, shape)):
            if isinstance(want, int):
                if want != got:
                    return (f"input {self.name!r} has shape {list(shape)}, the package needs {_show_shape(self)}"
                            f" (dimension {axis} is fixed at {want})")
                continue
            limits = self.range[axis] if axis < len(self.range) else None
            if limits is not None:
                low, high = limits
                if got < low or (high is not None and got > high):
                    bound = f"{low}..{high}" if high is not None else f">= {low}"
                    return (f"input {self.name!r} has size {got} in dimension {axis} ({want}), the package"
                            f" accepts {bound}")
            if symbols.setdefault(want, got) != got:
                return (f"input {self.name!r} has size {got} in dimension {axis} ({want}), but {want} is"
                        f" {symbols[want]} in another input")
        return None


def _show_shape(spec: TensorSpec) -> str:
    parts = []
    for axis, dim in enumerate(spec.shape):
        limits = spec.range[axis] if axis < len(spec.range) else None
        if isinstance(dim, str) and limits is not None:
            parts.append(f"{dim}:{limits[0]}..{limits[1] if limits[1] is not None else ''}")
        else:
            parts.append(str(dim))
    return "[" + ", ".join(parts) + "]"


def read_manifest(package_dir: Path) -> dict[str, Any]:
    path = Path(package_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{path}: not found; this is not a modelpack package") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: not valid JSON: {exc}") from None
    try:
        Manifest.from_json(manifest)
    except SchemaError as exc:
        raise PackageError(f"{path}: {exc}") from None
    return manifest


def verify_files(package_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Raise unless the files under ``package_dir`` are exactly the manifest's sha256
    table (plus the attestations a signed package carries at its root, which the
    signature covers): bytecode caches count (Python would run them instead of the
    checked source), and anything but a regular file or folder is refused."""
    root = Path(package_dir)
    actual, problems = {}, []
    for p in sorted(root.rglob("*")):
        name = p.relative_to(root).as_posix()
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            problems.append(f"{name}: not a regular file")
        elif p.is_file() and name != MANIFEST and name not in ATTESTATIONS:
            actual[name] = sha256_file(p)
    problems += file_problems(manifest["files"], actual)
    if problems:
        raise PackageError(f"{root}: integrity check failed: {problems[0]}"
                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def inside(package_dir: Path, relative: str) -> Path:
    """``package_dir / relative`` for a path the manifest names, refused unless it stays
    inside the package: an absolute or ``..`` path would run a file no checksum covers."""
    root = Path(package_dir).resolve()
    path = (root / relative).resolve()
    if not isinstance(relative, str) or Path(relative).is_absolute() or not path.is_relative_to(root) or path == root:
        raise PackageError(f"{package_dir}: manifest.json names {relative!r}, which is outside the package")
    return path


class Session:
    """A loaded package artifact; ``run`` validates feeds against the signature."""

    def __init__(self, package_dir: Path, manifest: dict[str, Any], artifact: Mapping[str, Any],
                 threads: int | None = None) -> None:
        self.package_dir = Path(package_dir)
        self.manifest = manifest
        self.artifact = dict(artifact)
        self.inputs = [TensorSpec.from_json(t) for t in manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(t) for t in manifest["outputs"]]
        options = dict(artifact.get("runtime", {}))
        if threads is not None:  # the caller's count wins over what the package recorded
            options["threads"] = threads
        self._runner = open_artifact(artifact["engine"], inside(self.package_dir, artifact["path"]), options)
        self._names = {t.name for t in self.inputs}
        self._checks = [(t, np.dtype(t.dtype)) for t in self.inputs]
        self._output_names = [t.name for t in self.outputs]
        self._output_dtypes = [(t.name, np.dtype(t.dtype)) for t in self.outputs if t.dtype in np.sctypeDict]
        self._passed_shapes: tuple[tuple[int, ...], ...] | None = None

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds`` as arrays, checked against the signature. This runs on every call of a
        model that may take a tenth of a millisecond, so the names and dtypes are compared
        against what ``__init__`` prepared, and the shapes are walked (ranges, names that
        must agree across inputs) only when they differ from the last set that passed:
        a device feeds one size call after call."""
        if feeds.keys() != self._names:
            raise PackageError(f"inputs do not match the package signature: missing"
                               f" {sorted(self._names - set(feeds))}, unexpected {sorted(set(feeds) - self._names)}")
        checked = {}
        for spec, dtype in self._checks:
            array = feeds[spec.name]
            if type(array) is not np.ndarray:
                array = np.asarray(array)
            if array.dtype != dtype:
                raise PackageError(f"input {spec.name!r} has dtype {array.dtype}, the package needs {spec.dtype}")
            checked[spec.name] = array
        shapes = tuple([array.shape for array in checked.values()])
        if shapes != self._passed_shapes:
            symbols: dict[str, int] = {}
            for spec, shape in zip(self.inputs, shapes):
                problem = spec.shape_problem(shape, symbols) if shape != spec.shape else None
                if problem:
                    raise PackageError(problem)
            self._passed_shapes = shapes  # one tuple, replaced whole: safe across threads
        return checked

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        produced = self._runner.run(self._check_feeds(feeds))
        try:
            outputs = {name: produced[name] for name in self._output_names}
        except KeyError:
            missing = [name for name in self._output_names if name not in produced]
            raise PackageError(f"the engine produced no output named {missing}") from None
        for name, dtype in self._output_dtypes:
            if outputs[name].dtype != dtype:  # an engine that computes float16 or int64 as float32/int32
                outputs[name] = outputs[name].astype(dtype)
        return outputs

    def self_test(self) -> Comparison:
        """Run the golden samples shipped in the package, at every size they were made
        for, and compare with the reference outputs under the tolerance recorded at
        build time. Outputs at sizes other than the benchmark one are named
        ``"NAME @POINT"`` in the result."""
        samples = self.manifest["samples"]
        tolerance = Tolerance.from_json(self.manifest["tolerance"])
        result = Comparison(tolerance)
        for size in [{"point": "bench", **samples}, *samples.get("sizes", [])]:
            feeds = {name: np.load(inside(self.package_dir, rel), allow_pickle=False)
                     for name, rel in size["inputs"].items()}
            reference = {name: np.load(inside(self.package_dir, rel), allow_pickle=False)
                         for name, rel in size["reference"].items()}
            compared = compare_outputs(self.run(feeds), reference, tolerance)
            for output in compared.outputs:
                if size["point"] != "bench":
                    output.name = f"{output.name} @{size['point']}"
                    output.problem = output.problem and f"{output.problem} at the {size['point']} size"
                result.outputs.append(output)
        return result


def artifacts_for(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The runnable artifacts of a package, primary first."""
    runnable = [a for a in manifest["artifacts"] if a["role"] in ("primary", "alternate")]
    return sorted(runnable, key=lambda a: a["role"] != "primary")


def load(package_dir: str | Path, artifact: str | None = None, verify: bool = True,
         public_key: str | Path | None = None, threads: int | None = None) -> Session:
    """Open a package directory for inference on this machine, with ``threads`` CPU
    threads for the engine if given (every engine takes it; else the package's own
    setting, else the engine's default).

    Checks, in order, the signature (with ``public_key``: every file must be what its
    owner signed), the file checksums, that this machine can run the package's target,
    and that the installed engine is compatible with the one that built it, and raises
    :class:`PackageError` naming the first problem found.
    """
    package_dir = Path(package_dir)
    if public_key is not None:
        try:
            verify_signature(package_dir, public_key)
        except SignatureError as exc:
            raise PackageError(str(exc)) from None
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
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise PackageError(f"threads must be a whole number >= 1 (got {threads!r})")
        return Session(package_dir, manifest, chosen, threads)
    except EngineUnavailable as exc:
        raise PackageError(str(exc)) from None
