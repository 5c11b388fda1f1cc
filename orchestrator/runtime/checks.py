"""Checks shared by the packager, the controller and the device: file integrity,
platform and engine compatibility, and output accuracy against a reference.

They live in the runtime because the runtime is the one piece present everywhere a
package goes; keeping a single implementation means the build host's self-test and
the device's self-test cannot disagree about what "within tolerance" means.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np

from .functions import TAP_PREFIX
from .platforms import this_machine


def sha256_stream(stream: BinaryIO, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(chunk), b""):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as stream:
        return sha256_stream(stream)


def content_sha256(path: Path) -> str:
    """sha256 of a file, computed once per version of it (path, size, mtime) in this
    process: the controller needs a model's hash for the cache key, the SSH upload and
    the bootstrap, and a large model should be read once for all of them."""
    stat = Path(path).stat()
    return _cached_sha256(Path(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _cached_sha256(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_problems(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """Differences between the manifest's checksum table and the files present.

    Extra files count as problems too: a package is exactly what its manifest lists.
    """
    problems = []
    for path in sorted(set(expected) | set(actual)):
        if path not in actual:
            problems.append(f"{path}: listed in manifest.json but missing")
        elif path not in expected:
            problems.append(f"{path}: present but not listed in manifest.json")
        elif expected[path] != actual[path]:
            problems.append(f"{path}: sha256 {actual[path]} does not match manifest {expected[path]}")
    return problems


def platform_problem(target: Mapping[str, str]) -> str | None:
    """Why this machine cannot run a package for ``target``, or None if it can.

    A package runs on its target OS/arch, and also on its build OS/arch (an Android
    package is checked on Linux arm64), because that is where it was self-tested.
    """
    here = this_machine()
    allowed = {(target["os"], target["arch"]), (target["build_os"], target["build_arch"])}
    if here in allowed:
        return None
    return (
        f"package target {target['name']} needs {target['os']}/{target['arch']}"
        f" but this machine is {here[0]}/{here[1]}"
    )


def engine_version_problem(engine: str, built_with: str, installed: str | None) -> str | None:
    """Why the installed engine cannot be trusted to run an artifact built with
    ``built_with``, or None. Same major version and at least the same minor: artifacts
    (opsets, ORT format versions) are forward- but not backward-compatible."""
    if installed is None:
        return f"{engine} is not installed; the package needs {engine}=={built_with}"

    def major_minor(v: str) -> tuple[int, int]:
        parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in v.split(".")[:2]]
        return (parts + [0, 0])[0], (parts + [0, 0])[1]

    need, have = major_minor(built_with), major_minor(installed)
    if have[0] != need[0] or have < need:
        return f"{engine} {installed} is installed but the package was built with {built_with}"
    return None


@dataclass(frozen=True)
class Tolerance:
    """The accuracy gate: ``atol``/``rtol`` for every output, and each output named in
    ``outputs`` held to its own pair. One pair for all outputs lets a small output through
    at the scale of a large one: a detector's scores (0..1) gated at its boxes' pixel
    tolerance pass whatever they are."""

    atol: float
    rtol: float
    outputs: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def of(self, name: str) -> tuple[float, float]:
        """(atol, rtol) for output ``name``; a gate tap reads as the output it taps."""
        return self.outputs.get(name.removeprefix(TAP_PREFIX), (self.atol, self.rtol))

    def to_json(self) -> dict:
        found: dict = {"atol": self.atol, "rtol": self.rtol}
        if self.outputs:
            found["outputs"] = {name: {"atol": a, "rtol": r} for name, (a, r) in self.outputs.items()}
        return found

    @classmethod
    def from_json(cls, data: Mapping) -> "Tolerance":
        """From ``to_json``'s form, as a manifest or a message carries it (other keys, such
        as the manifest's ``basis``, are not the gate's)."""
        return cls(float(data["atol"]), float(data["rtol"]),
                   {name: (float(o["atol"]), float(o["rtol"])) for name, o in (data.get("outputs") or {}).items()})


@dataclass
class OutputComparison:
    name: str
    max_abs: float
    max_rel: float
    passed: bool
    problem: str | None = None
    #: the gate this output was held to
    atol: float = 0.0
    rtol: float = 0.0

    def to_json(self) -> dict:
        def finite(x: float) -> float | None:  # JSON has no Infinity
            return x if np.isfinite(x) else None

        out = {"max_abs": finite(self.max_abs), "max_rel": finite(self.max_rel), "passed": self.passed,
               "atol": self.atol, "rtol": self.rtol}
        if self.problem:
            out["problem"] = self.problem
        return out


@dataclass
class Comparison:
    tolerance: Tolerance
    outputs: list[OutputComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "atol": self.tolerance.atol,  # the default; each output's entry gives the pair it was held to
            "rtol": self.tolerance.rtol,
            "outputs": {o.name: o.to_json() for o in self.outputs},
        }

    def summary(self) -> str:
        failing = [o for o in self.outputs if not o.passed]
        if not failing:
            return "all outputs within tolerance"
        return "; ".join(
            o.problem or f"output {o.name!r}: max abs error {o.max_abs:.3g}, max rel error {o.max_rel:.3g}"
            f" exceed atol={o.atol:g} rtol={o.rtol:g}"
            for o in failing
        )


def compare_outputs(
    actual: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], tolerance: Tolerance
) -> Comparison:
    """Per-output accuracy gate: every element of output ``name`` must satisfy
    ``|a - r| <= atol + rtol * |r|`` with ``tolerance.of(name)`` (numpy.allclose
    semantics, NaN equal to NaN). The observed max abs and max relative errors are
    recorded either way."""
    result = Comparison(tolerance)
    for name, ref in reference.items():
        atol, rtol = tolerance.of(name)
        if name not in actual:
            result.outputs.append(OutputComparison(name, float("inf"), float("inf"), False,
                                                   f"output {name!r} missing", atol, rtol))
            continue
        got = np.asarray(actual[name])
        ref = np.asarray(ref)
        if got.shape != ref.shape:
            result.outputs.append(OutputComparison(
                name, float("inf"), float("inf"), False,
                f"output {name!r} has shape {list(got.shape)}, reference {list(ref.shape)}", atol, rtol))
            continue
        if ref.dtype.kind in "fc" or got.dtype.kind in "fc":
            g, r = got.astype(np.float64), ref.astype(np.float64)
            both_nan = np.isnan(g) & np.isnan(r)
            diff = np.where(both_nan, 0.0, np.abs(g - r))
            diff = np.where(np.isnan(diff), np.inf, diff)
            # relative error where it means something: near zero, atol is the scale
            rel = diff / np.maximum(np.abs(r), atol if atol > 0 else np.finfo(np.float64).tiny)
            ok = bool(np.all(diff <= atol + rtol * np.abs(np.nan_to_num(r))))
            max_abs = float(diff.max()) if diff.size else 0.0
            max_rel = float(np.where(diff == 0, 0.0, rel).max()) if diff.size else 0.0
        else:
            ok = bool(np.array_equal(got, ref))
            if ref.dtype.kind in "iub" and got.dtype.kind in "iub":
                delta = np.abs(got.astype(np.float64) - ref.astype(np.float64))
                max_abs = float(delta.max(initial=0.0))
            else:
                max_abs = 0.0 if ok else float("inf")
            max_rel = 0.0 if ok else float("inf")
        result.outputs.append(OutputComparison(name, max_abs, max_rel, ok, None, atol, rtol))
    return result
