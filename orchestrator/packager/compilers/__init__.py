"""Algorithm library: the registry of compilers a packaging instruction can name.

Each compiler lives in its own module and declares a typed options class, a version
probe, and the targets it can honestly build for. The controller validates a spec's
compiler calls against this registry before any host is touched; on the build host the
packager runs each call in a worker process (converters can crash) and the test
script measures what they produced.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..accelerate import VARIANTS
from .base import Artifact, CompileContext, CompileResult, Compiler, CompilerError, OptionsError, parse_options
from .coreml import CoreMlCompiler
from .mnn import MnnCompiler
from .ncnn import NcnnCompiler
from .onnxruntime import OnnxRuntimeCompiler
from .openvino import OpenVinoCompiler

__all__ = ["Artifact", "CompileContext", "CompileResult", "Compiler", "CompilerError", "OptionsError",
           "call_problem", "parse_options", "registry"]


def registry() -> dict[str, Compiler]:
    compilers: list[Compiler] = [OnnxRuntimeCompiler(), OpenVinoCompiler(), MnnCompiler(), NcnnCompiler(),
                                 CoreMlCompiler()]
    return {c.name: c for c in compilers}


def call_problem(name: str, options: Mapping[str, Any], variant: str | None = None) -> str | None:
    """What is wrong with one compiler call, or None: the one check the controller runs
    on a spec and the packager on a job (which may come from another controller version)."""
    known = registry()
    if name not in known:
        return f"unknown compiler {name!r}; known: {', '.join(known)}"
    if variant is not None and variant not in VARIANTS:
        return f"unknown acceleration variant {variant!r}"
    try:
        parse_options(known[name].options_type, options)
    except (OptionsError, TypeError) as exc:
        return f"{name}: {exc}"
    return None
