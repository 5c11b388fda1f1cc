"""Packaging instructions (``modelpack.yaml``): schema, validation and per-target expansion.

Everything a spec refers to (the model, the samples, compiler options, shapes) is
checked here, before any host is contacted, so a typo costs a second, not a night.
Keys for capabilities this version does not implement yet are still parsed against
their schema, then refused explicitly: a spec is never half-honoured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .config import read_yaml, validate
from .errors import InputError
from .packager.compilers import OptionsError, parse_options, registry
from .packager.job import CompilerCall
from .packager.samples import concrete_shapes, load_samples
from .packager.signature import ModelError, load_onnx, signature
from .runtime.checks import sha256_file
from .targets import TARGETS, Target, known_target

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tolerance(_Strict):
    atol: float = Field(1e-4, ge=0, description="absolute tolerance per output element")
    rtol: float = Field(1e-3, ge=0, description="relative tolerance per output element")


class SelectPolicy(_Strict):
    """How the test script picks among candidates that pass the accuracy gate."""

    metric: Literal["latency", "throughput", "size"] = Field(
        "latency", description="lowest median latency, best throughput (mean latency), or smallest artifact")
    latency_budget_ms: float | None = Field(None, gt=0, description="reject candidates whose median is above this")
    prefer: list[str] = Field(default_factory=list, description="tie-break order of engines (within 2%)")
    engine: str | None = Field(None, description="force this engine (it must still pass the gate)")
    benchmark_s: float = Field(0.4, gt=0, le=60, description="timed-run budget per candidate in each of 5 interleaved rounds, seconds")


AccelerateVariant = Literal[
    "simplify", "ort-optimize", "fp16", "int8-dynamic", "int8-static",
    "openvino-bf16", "openvino-f16", "mnn-fp16", "mnn-weight-int8", "ncnn-fp16",
]


class Functions(_Strict):
    """Pre/post-processing fused into the graph (not supported yet)."""

    pre: list[str | dict[str, Any]] = []
    post: list[str | dict[str, Any]] = []


class Spec(_Strict):
    name: str = Field(description="package name; letters, digits, '.', '_', '+', '-'")
    version: str = Field(description="package version, as a string (quote it in YAML)")
    model: str = Field(description="path to the .onnx model, relative to the spec file")
    targets: list[Annotated[str, AfterValidator(known_target)]] = Field(
        min_length=1, description=f"targets to build: {', '.join(TARGETS)}")
    compilers: list[str | dict[str, dict[str, Any] | None]] = Field(
        default=["onnxruntime"], min_length=1,
        description="compiler calls: several are candidates the test script chooses among; one means exactly"
                    " that compiler. An entry may carry options: {openvino: {precision: f32}}",
    )
    samples: str | None = Field(None, description=".npy (single input) or .npz (keyed by input name) for the self-test; random inputs when absent")
    shapes: dict[str, list[int]] = Field(default_factory=dict, description="concrete shapes for inputs with dynamic dimensions")
    features: dict[str, list[str]] = Field(
        default_factory=dict, description="host features each target requires, e.g. {linux-x86_64: [avx512]}")
    tolerance: Tolerance = Field(Tolerance(), description="accuracy gate; see `tolerance` below")
    select: SelectPolicy | None = Field(None, description="selection policy; see `select` below")
    accelerate: list[AccelerateVariant] | None = Field(
        None, description="acceleration variants to try (validated, not supported yet)")
    functions: Functions | None = Field(None, description="business functions; see `functions` below")

    @field_validator("name", "version", mode="before")
    @classmethod
    def _plain_name(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f"must be a string; quote it in YAML, e.g. \"{value}\"")
        if isinstance(value, str) and not _NAME.match(value):
            raise ValueError("may contain only letters, digits, '.', '_', '+' and '-', and must not start with a symbol")
        return value

    @model_validator(mode="after")
    def _features_for_listed_targets(self) -> "Spec":
        stray = sorted(set(self.features) - set(self.targets))
        if stray:
            raise ValueError(f"features names target(s) {stray} that are not in targets")
        return self

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a target twice")
        return value

    @model_validator(mode="after")
    def _compilers_valid(self) -> "Spec":
        known = registry()
        for index, call in enumerate(self.compiler_calls()):
            compiler = known.get(call.name)
            if compiler is None:
                raise ValueError(f"compilers[{index}]: unknown compiler {call.name!r}; known: {', '.join(known)}")
            try:
                parse_options(compiler.options_type, call.options)
            except (OptionsError, TypeError) as exc:
                raise ValueError(f"compilers[{index}].{call.name}: {exc}") from None
        calls = self.compiler_calls()
        for target in self.targets:
            able = [c.name for c in calls if target in known[c.name].targets]
            if not able:
                names = ", ".join(c.name for c in calls)
                raise ValueError(f"no compiler in the list ({names}) can build for {target}")
        if self.select and self.select.engine:
            engines = {known[c.name].engine for c in calls} | {c.name for c in calls}
            if self.select.engine not in engines:
                raise ValueError(f"select.engine {self.select.engine!r} is not among the compilers ({', '.join(sorted(engines))})")
        return self

    def compiler_calls(self) -> list[CompilerCall]:
        calls = []
        for entry in self.compilers:
            if isinstance(entry, str):
                calls.append(CompilerCall(entry))
            else:
                if len(entry) != 1:
                    raise ValueError("a compiler entry with options must have exactly one key, the compiler name")
                (name, options), = entry.items()
                calls.append(CompilerCall(name, dict(options or {})))
        return calls


#: keys whose schemas are validated but whose capabilities are not implemented yet
NOT_SUPPORTED_YET = ("accelerate", "functions")


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


@dataclass(frozen=True)
class LoadedSpec:
    path: Path
    spec: Spec
    model: ModelInfo
    samples: Path | None

    @property
    def targets(self) -> list[Target]:
        return [TARGETS[t] for t in self.spec.targets]


def load_spec(path: Path) -> LoadedSpec:
    """Read, validate and resolve one spec file, checking the model and samples it names."""
    path = Path(path)
    spec = validate(path, read_yaml(path), Spec)
    for key in NOT_SUPPORTED_YET:
        if getattr(spec, key) is not None:
            raise InputError(path, key, "valid, but not supported yet by this version of modelpack; remove it")

    model_path = (path.parent / spec.model).resolve()
    try:
        model = load_onnx(model_path)
        inputs, outputs = signature(model)
    except ModelError as exc:
        raise InputError(path, "model", f"{model_path}: {exc}") from None
    info = ModelInfo(model_path, sha256_file(model_path), inputs, outputs)

    samples = None
    if spec.samples is None:
        try:
            concrete_shapes(inputs, spec.shapes)
        except ModelError as exc:
            raise InputError(path, "shapes", str(exc)) from None
    else:
        samples = (path.parent / spec.samples).resolve()
        if not samples.is_file():
            raise InputError(path, "samples", f"{samples}: file not found")
        try:
            load_samples(samples, inputs)
        except ModelError as exc:
            raise InputError(path, "samples", f"{samples}: {exc}") from None
    return LoadedSpec(path, spec, info, samples)
