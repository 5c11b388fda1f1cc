"""Algorithm library: the registry of compilers a packaging instruction can name.

Each compiler lives in its own module and declares a typed options class, a version
probe, and the targets it can build for. The controller validates a spec's compiler
calls against this registry before any host is touched; the packager looks compilers
up here on the build host.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Protocol

from ..job import JobTarget


class CompilerError(RuntimeError):
    """The compiler failed on this model; a package failure, not an infrastructure one."""


class OptionsError(ValueError):
    pass


@dataclass
class Artifact:
    """One file a compiler produced, relative to the package root."""

    path: str
    format: str
    engine: str
    role: str  # primary | alternate | auxiliary


@dataclass
class CompileResult:
    artifacts: list[Artifact]
    #: False when a converter's output could not be made byte-reproducible on this host
    reproducible: bool = True


class Compiler(Protocol):
    name: str
    engine: str
    targets: frozenset[str]
    options_type: type

    def version(self) -> str | None: ...

    def compile(self, model: Path, package_root: Path, target: JobTarget, options: Any) -> CompileResult: ...


def parse_options(options_type: type, raw: Mapping[str, Any]) -> Any:
    """Build a compiler's options dataclass, rejecting unknown keys and bad choices."""
    known = {f.name: f for f in fields(options_type)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise OptionsError(f"unknown option(s) {unknown}; valid: {sorted(known)}")
    options = options_type(**raw)
    validate = getattr(options, "validate", None)
    if validate:
        validate()
    return options


def registry() -> dict[str, Compiler]:
    from .onnxruntime import OnnxRuntimeCompiler

    compilers: list[Compiler] = [OnnxRuntimeCompiler()]
    return {c.name: c for c in compilers}
