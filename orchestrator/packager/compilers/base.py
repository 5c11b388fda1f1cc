"""What every compiler module builds on: the protocol a compiler meets, its results and
errors, and the options parsing they share. Kept apart from the registry
(``compilers/__init__.py``) so that compiler modules never import the package that
imports them."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Protocol

from ...runtime.engines import installed_version
from ..causes import clean, names_a_problem, root_cause
from ..job import JobTarget


class CompilerError(RuntimeError):
    """The compiler failed on this model; a package failure, not an infrastructure one."""


class OptionsError(ValueError):
    pass


@dataclass
class Artifact:
    """One file a compiler produced, relative to the candidate's (later the package's) root."""

    path: str
    format: str
    engine: str
    role: str  # primary | alternate | auxiliary
    #: options the runtime needs to run it exactly as tested (precision hints, blob names)
    runtime: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompileContext:
    """What a compiler may need to know about the model: its inputs and outputs at the
    benchmark size, and the inputs at a second checked size (None when the package has
    no dynamic dimension), for converters that trace one size and keep dimensions
    dynamic only when shown two (pnnx)."""

    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    alternate_inputs: list[dict[str, Any]] | None = None


@dataclass
class CompileResult:
    artifacts: list[Artifact]
    #: False when a converter's output could not be made byte-reproducible on this host
    reproducible: bool = True
    #: what the compiler did or could not do, for the manifest (e.g. "not compiled: no Xcode")
    notes: list[str] = field(default_factory=list)


class Compiler(Protocol):
    name: str
    engine: str
    #: Python distribution whose version is the compiler's (and the engine's) version
    distribution: str
    targets: frozenset[str]
    options_type: type
    #: Python distributions the compiler's route needs on the build host
    requires: tuple[str, ...]
    #: True when the compiler needs every input at a fixed size (it gets the fixed model)
    fixed_shapes: bool
    #: True when its engine runs the graph as it is given, so the most-folded faithful
    #: model serves it best (it gets the folded model; see normalise.py)
    folded: bool

    def version(self) -> str | None: ...

    def compile(self, model: Path, root: Path, target: JobTarget, options: Any,
                context: CompileContext) -> CompileResult: ...


class BaseCompiler:
    """Shared behaviour: a compiler's version is its Python distribution's version, and
    it is available when every distribution its route needs is installed."""

    name: str
    engine: str
    distribution: str
    targets: frozenset[str]
    options_type: type
    fixed_shapes = False
    folded = False

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.distribution,)

    def version(self) -> str | None:
        if any(installed_version(d) is None for d in self.requires):
            return None
        return installed_version(self.distribution)


def converter_failed(tool: str, returncode: int, output: str) -> CompilerError:
    """A CompilerError naming how the converter ended (a crash by its signal's name: a
    negative code means nothing to a reader) and the first message it printed about the
    problem."""
    cause = root_cause(output)
    if returncode < 0:
        how = f"crashed ({_signal_name(-returncode)})"
        if not names_a_problem(cause):  # it died before saying why: where it was is all there is
            lines = [clean(line) for line in output.splitlines() if clean(line)]
            cause = f"no error message; its last output: {lines[-1] if lines else 'none'}"
    else:
        how = f"failed (code {returncode})" if returncode else "failed"
    return CompilerError(f"{tool} {how}: {cause}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


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


def choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise OptionsError(f"{name} must be one of {list(allowed)}, not {value!r}")
