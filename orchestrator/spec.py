"""Packaging instructions (``modelpack.yaml``): schema, validation and per-target expansion.

Everything a spec refers to (the model, the samples, compiler options, shapes) is
checked here, before any host is contacted, so a typo costs a second, not a night.
Keys for capabilities this version does not implement yet are still parsed against
their schema, then refused explicitly: a spec is never half-honoured.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Sequence

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .config import read_yaml, validate
from .errors import InputError
from .packager.accelerate import ALWAYS_APPLIED, VARIANTS
from .packager.compilers import call_problem, registry
from .packager.functions import FunctionError, package_inputs
from .packager.functions import resolve as resolve_functions
from .packager.evaluate import MIN_EVALUATION_SAMPLES, held_out_count
from .packager.job import CompilerCall
from .packager.samples import DimRange, load_samples, resolve_dims
from .packager.signature import ModelError, UnrankedInput, is_quantized, load_onnx_with_data, signature
from .runtime.checks import content_sha256
from .targets import TARGETS, Target, known_target

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # fullmatch: "$" would let a trailing newline in


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: the gate a spec gets by default, per output format: about ten units in the last place
#: relative, since two correct engines already differ by one (float16: 1e-3 near 1.0)
DEFAULT_TOLERANCE = {"float32": (1e-4, 1e-3), "float16": (1e-3, 1e-2), "bfloat16": (1e-2, 5e-2)}


class OutputTolerance(_Strict):
    """One output's own gate."""

    atol: float | None = Field(None, ge=0, description="absolute tolerance per element of this output (default:"
                                                       " the spec's atol)")
    rtol: float | None = Field(None, ge=0, description="relative tolerance per element of this output (default:"
                                                       " the spec's rtol)")


class Tolerance(_Strict):
    atol: float | None = Field(None, ge=0, description="absolute tolerance per output element (default: 1e-4; 1e-3"
                                                       " where the model has float16 outputs, 1e-2 for bfloat16;"
                                                       " for a quantised model, with rtol unset too, twice what"
                                                       " onnxruntime's own kernels differ from its exact semantics"
                                                       " on the golden samples, measured on the build host)")
    rtol: float | None = Field(None, ge=0, description="relative tolerance per output element (default: 1e-3; 1e-2"
                                                       " where the model has float16 outputs, 5e-2 for bfloat16)")
    outputs: dict[str, OutputTolerance] = Field(
        default_factory=dict, description="model outputs held to a gate of their own, by name, e.g. {boxes: {atol:"
                                          " 0.5}} for a detector whose boxes are in pixels and whose scores are"
                                          " not; the others are held to atol and rtol")

    def resolved(self, output_dtypes: Iterable[str]) -> tuple[float, float, dict[str, dict[str, float]]]:
        """(atol, rtol, {output: {atol, rtol}}) for a model with outputs of these dtypes:
        what the spec sets, and for a key it leaves out the default of the coarsest
        floating format among them."""
        defaults = [DEFAULT_TOLERANCE.get(dtype, DEFAULT_TOLERANCE["float32"]) for dtype in output_dtypes]
        atol, rtol = (max(column) for column in zip(DEFAULT_TOLERANCE["float32"], *defaults))
        atol, rtol = (atol if self.atol is None else self.atol, rtol if self.rtol is None else self.rtol)
        own = {name: {"atol": atol if o.atol is None else o.atol, "rtol": rtol if o.rtol is None else o.rtol}
               for name, o in self.outputs.items()}
        return atol, rtol, own

    def measured(self, quantized: bool) -> bool:
        """Whether the packager sets the gate from the model itself: for a quantised model
        whose spec leaves the tolerance unset. Its engines' integer kernels differ from its
        exact semantics by rounding steps (onnxruntime's own by 10 % of an output on a
        statically quantised classifier), which no fixed float tolerance describes."""
        return quantized and self.atol is None and self.rtol is None and not self.outputs


class SelectPolicy(_Strict):
    """How the test script picks among candidates that pass the accuracy gate."""

    metric: Literal["latency", "throughput", "size"] = Field(
        "latency", description="lowest median latency, best throughput (mean latency), or smallest artifact")
    latency_budget_ms: float | None = Field(None, gt=0, description="reject candidates whose median is above this")
    prefer: list[str] = Field(default_factory=list, description="tie-break order of engines (within 2%)")
    engine: str | None = Field(None, description="force this engine (it must still pass the gate)")
    benchmark_s: float = Field(0.4, gt=0, le=60, description="timed-run budget per candidate in each interleaved round,"
                                                             " seconds")
    tune: bool = Field(False, description="also search runtime settings (threads unless `device` fixes them,"
                                          " onnxruntime's execution mode, OpenVINO's performance hint, ncnn's light"
                                          " mode and packing) for the winner and the runner-up, and ship the best"
                                          " if it beats the package as built by more than that package, measured"
                                          " twice, differs from itself")
    max_rounds: int = Field(6, ge=3, le=100, description="rounds at most: measuring stops once every candidate is"
                                                           " slower than the leader or tied with it at 95 % confidence"
                                                           " (at least 3 rounds), else here, undecided")


AccelerateVariant = Literal[tuple([*ALWAYS_APPLIED, *VARIANTS])]  # type: ignore[valid-type]


class Gate(_Strict):
    """How acceleration variants are judged against the fp32 model. Default: the
    per-output tolerance on the model's own outputs. A task criterion replaces it for the
    variants only; it is computed on held-out samples (`evaluation`, or half of
    `calibration`), needs at least 20 of them, and passes only when its 95 % interval
    clears the limit."""

    top1_agreement: float | None = Field(
        None, gt=0, le=1, description="classifiers: minimum share of samples whose arg-max over the class axis of the"
                                      " model's output matches the fp32 model's")
    box_recall: float | None = Field(
        None, gt=0, le=1, description="detectors (with the `detections` function): minimum share of the fp32 model's"
                                      " boxes the variant finds (same class, IoU >= `iou`)")
    sequence_agreement: float | None = Field(
        None, gt=0, le=1, description="recognisers: minimum share of sequence steps whose arg-max matches the fp32"
                                      " model's")
    iou: float = Field(0.5, gt=0, le=1, description="IoU at which a box counts as found (box_recall)")
    output: str | None = Field(None, description="the model output the criterion reads (default: the one the post"
                                                 " functions read, else the first); never a post-processed one")
    metric: str | None = Field(
        None, description="FILE.py:FUNCTION in the spec's folder; FUNCTION(outputs, inputs) -> float over the"
                          " held-out samples (lists of dicts of the model's own outputs), higher is better")
    max_drop: float | None = Field(None, ge=0, description="largest allowed drop of the metric against fp32")

    @model_validator(mode="after")
    def _one_criterion(self) -> "Gate":
        given = [k for k in ("top1_agreement", "box_recall", "sequence_agreement", "metric")
                 if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one criterion, not {' and '.join(given)}")
        if (self.metric is None) != (self.max_drop is None):
            raise ValueError("metric and max_drop go together")
        if self.metric is not None and not re.fullmatch(r"[^:\n]+\.py:[A-Za-z_][A-Za-z0-9_]*", self.metric):
            raise ValueError("metric must be written FILE.py:FUNCTION")
        return self

    @property
    def criterion(self) -> str | None:
        return next((k for k in ("top1_agreement", "box_recall", "sequence_agreement", "metric")
                     if getattr(self, k) is not None), None)


class ShapeRange(_Strict):
    """A dynamic dimension's accepted sizes, written in place of a size under `shapes`:
    `shapes: {x: [1, 3, 48, {min: 32, max: 1280, bench: 320}]}`. The package accepts
    any size in the range; the gate and the self-test run at `min`, `bench` and `max`."""

    min: int = Field(ge=1, description="smallest size the package accepts (checked)")
    max: int = Field(ge=1, description="largest size the package accepts (checked)")
    bench: int | None = Field(None, ge=1, description="size of the golden samples and the benchmark (default: min)")


class Accelerate(_Strict):
    variants: list[AccelerateVariant] = Field(min_length=1, description="variants to try, each gated and measured")
    gate: Gate = Field(Gate(), description="how variants are judged; see `gate` below")

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, value: Any) -> Any:
        return {"variants": value} if isinstance(value, list) else value


class Functions(_Strict):
    """Pre/post-processing fused into the graph; see docs/functions.md for the steps."""

    pre: list[str | dict[str, Any]] = Field(default_factory=list, description="steps from the image to the model input")
    post: list[str | dict[str, Any]] = Field(default_factory=list, description="steps from the model output on")
    input: str | None = Field(None, description="model input the pre steps feed (default: the only one)")
    output: str | None = Field(None, description="model output the post steps read (default: the first)")
    fallback: Literal["runtime", "drop"] = Field(
        "runtime", description="for an engine that cannot hold a fused op: apply the functions in the runtime"
                               " (NumPy), or drop that candidate")


class OnnxRuntimeSettings(_Strict):
    execution_mode: Literal["sequential", "parallel"] | None = Field(
        None, description="run independent graph branches one after another or in parallel (inter-op threads)")
    optimization: Literal["all", "extended", "basic", "disabled"] | None = Field(
        None, description="graph optimisation level at session creation (default: all)")


class OpenVinoSettings(_Strict):
    performance_hint: Literal["LATENCY", "THROUGHPUT"] | None = Field(
        None, description="OpenVINO's PERFORMANCE_HINT: tune the CPU plugin for one request or for many")
    streams: int | None = Field(None, ge=1, le=256, description="NUM_STREAMS: parallel inference streams")


class MnnSettings(_Strict):
    precision: Literal["normal", "high", "low"] | None = Field(
        None, description="MNN's precision mode; low allows fp16 arithmetic where the CPU has it (gated like"
                          " any candidate)")


class NcnnSettings(_Strict):
    light_mode: bool | None = Field(None, description="free intermediate blobs as soon as they are consumed")
    packing: bool | None = Field(None, description="ncnn's packed (SIMD) memory layout")


class EngineSettings(_Strict):
    """Per-engine runtime settings, recorded in the artifacts and applied by the package
    runtime on the device; the build host measures with them too."""

    onnxruntime: OnnxRuntimeSettings | None = None
    openvino: OpenVinoSettings | None = None
    mnn: MnnSettings | None = None
    ncnn: NcnnSettings | None = None


class Device(_Strict):
    """The device the package will run on, as far as the engines care: the build host
    measures candidates as the device will run them, and the package carries these
    settings so the device applies what was measured."""

    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads the device gives the engine (every"
                                                                  " engine runs with this many; default: the"
                                                                  " engine's own)")
    engines: EngineSettings | None = Field(None, description="settings per engine (onnxruntime, openvino, mnn,"
                                                                             " ncnn); see `device.engines.*` below")

    def job_fields(self) -> dict[str, Any]:
        """What the packager gets: the count and each engine's settings that are set."""
        engines = self.engines.model_dump(exclude_none=True) if self.engines else {}
        return {"threads": self.threads, "engines": {k: v for k, v in engines.items() if v}}


class Spec(_Strict):
    name: str = Field(description="package name; letters, digits, '.', '_', '+', '-'")
    version: str = Field(description="package version, as a string (quote it in YAML)")
    model: str = Field(description="path to the .onnx model, relative to the spec file; external data files it"
                                   " names (weights beside the graph) travel with it, each a regular file in its"
                                   " folder, and are part of what makes it unchanged")
    targets: list[Annotated[str, AfterValidator(known_target)]] = Field(
        min_length=1, description=f"targets to build: {', '.join(TARGETS)}")
    compilers: list[str | dict[str, dict[str, Any] | None]] = Field(
        default=["onnxruntime"], min_length=1,
        description="compiler calls: several are candidates the test script chooses among; one means exactly"
                    " that compiler. An entry may carry options: {openvino: {precision: f32}}",
    )
    samples: str | None = Field(None, description=".npy (single input) or .npz (keyed by input name) for the self-test; random inputs when absent")
    shapes: dict[str, list[int | ShapeRange]] = Field(
        default_factory=dict,
        description="sizes of dynamic dimensions for golden samples and benchmarks, e.g. {tokens: [1, 128]}; a"
                    " dimension may be a range instead (see `shapes` ranges below). The package keeps the model's"
                    " dynamic dimensions either way. An input the model gives no shape at all takes its rank from"
                    " here, every dimension dynamic")
    fixed_shapes: Literal["reject", "allow"] = Field(
        "reject", description="a candidate that runs only at the benchmark size (a fixed-shape compiler, an"
                              " engine failing at another checked size, or one that failed on the dynamic model and"
                              " was retried from the fixed-shape one) is rejected with that reason, or with"
                              " `allow` packaged at that size, which the manifest and report say")
    features: dict[str, list[str]] = Field(
        default_factory=dict, description="host features each target requires, e.g. {linux-x86_64: [avx512]}")
    tolerance: Tolerance = Field(Tolerance(), description="accuracy gate; see `tolerance` below")
    select: SelectPolicy | None = Field(None, description="selection policy; see `select` below")
    accelerate: Accelerate | None = Field(None, description="acceleration variants; see `accelerate` below")
    calibration: str | None = Field(
        None, description=".npz keyed by the package's input names, samples along a leading axis: calibrates"
                          " int8-static; without `evaluation`, half of it (seeded) is held out to judge variants")
    evaluation: str | None = Field(
        None, description=".npz like `calibration`: held-out samples that judge the variants (never calibrate"
                          " them); a task gate needs at least 20")
    functions: Functions | None = Field(None, description="business functions; see `functions` below")
    device: Device | None = Field(None, description="the device's threads and engine settings; see `device` below")
    zip: bool = Field(False, description="windows-x86_64: also publish the package as a .zip (the same files,"
                                         " for Windows users without tar), made from the verified .tar.gz")

    @field_validator("name", "version", mode="before")
    @classmethod
    def _plain_name(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f"must be a string; quote it in YAML, e.g. \"{value}\"")
        if isinstance(value, str) and not _NAME.fullmatch(value):
            raise ValueError("may contain only letters, digits, '.', '_', '+' and '-', and must not start with a symbol")
        return value

    @model_validator(mode="after")
    def _features_for_listed_targets(self) -> "Spec":
        stray = sorted(set(self.features) - set(self.targets))
        if stray:
            raise ValueError(f"features names target(s) {stray} that are not in targets")
        return self

    @field_validator("shapes", mode="before")
    @classmethod
    def _ranges_make_sense(cls, value: Any) -> Any:
        """min <= bench <= max, checked here so the error names the dimension."""
        if isinstance(value, dict):
            for name, dims in value.items():
                for axis, dim in enumerate(dims if isinstance(dims, list) else []):
                    if isinstance(dim, dict):
                        try:
                            DimRange.parse(dim, f"{name}[{axis}]")
                        except ModelError as exc:
                            raise ValueError(str(exc)) from None
        return value

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
            problem = call_problem(call.name, call.options)
            if problem:
                raise ValueError(f"compilers[{index}]{'.' if call.name in known else ': '}{problem}")
        calls = self.compiler_calls()
        for target in self.targets:
            able = [c.name for c in calls if target in known[c.name].targets]
            if not able:
                names = ", ".join(c.name for c in calls)
                raise ValueError(f"no compiler in the list ({names}) can build for {target}")
        if self.accelerate:
            names = {c.name for c in calls}
            for variant in self.accelerate.variants:
                if variant in VARIANTS and VARIANTS[variant].compiler not in names:
                    raise ValueError(f"accelerate variant {variant!r} is built by {VARIANTS[variant].compiler},"
                                     f" which is not among the compilers; add it")
                if variant in VARIANTS and VARIANTS[variant].needs_calibration and self.calibration is None:
                    raise ValueError(f"accelerate variant {variant!r} needs calibration samples (the `calibration`"
                                     f" key); it never calibrates on random data")
        if self.zip and not any(TARGETS[t].os == "windows" for t in self.targets):
            raise ValueError("zip: true applies to windows-x86_64 packages; this spec builds no Windows target")
        if self.select and self.select.engine:
            engines = ({known[c.name].engine for c in calls} | {c.name for c in calls}
                       | {f"{c.name}+{c.variant}" for c in self.variant_calls()})
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

    def job_shapes(self) -> dict[str, list[Any]]:
        """``shapes`` as the job carries them: sizes, and ranges as plain dicts."""
        return {name: [d.model_dump(exclude_none=True) if isinstance(d, ShapeRange) else d for d in dims]
                for name, dims in self.shapes.items()}

    def variant_calls(self) -> list[CompilerCall]:
        """One extra candidate per acceleration variant, built by its compiler with the
        baseline's options plus the variant's own."""
        if not self.accelerate:
            return []
        baseline = {c.name: c.options for c in self.compiler_calls()}
        return [CompilerCall(VARIANTS[v].compiler, {**baseline[VARIANTS[v].compiler], **VARIANTS[v].options}, v)
                for v in self.accelerate.variants if v in VARIANTS]


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    #: external data files by the location the model names them with, and their sha256
    external: dict[str, Path] = field(default_factory=dict)
    external_sha256: dict[str, str] = field(default_factory=dict)
    #: it computes in integers somewhere (quantised): see Tolerance.measured
    quantized: bool = False


@dataclass(frozen=True)
class LoadedSpec:
    path: Path
    spec: Spec
    model: ModelInfo
    samples: Path | None
    calibration: Path | None = None
    metric: Path | None = None
    #: label lists by the file name the spec gives, read on the controller
    labels: dict[str, list[str]] | None = None
    evaluation: Path | None = None

    @property
    def targets(self) -> list[Target]:
        return [TARGETS[t] for t in self.spec.targets]


def spec_file(spec_path: Path, key: str, name: str, allow_outside: Sequence[Path] = ()) -> Path:
    """The file a spec names, resolved through any links: a regular file inside the
    spec's folder, or under a folder the user named with ``--allow-outside``. A spec is
    shared and reviewed like code; it must not package ``/etc/passwd`` as labels or run a
    metric from anywhere on the machine that builds it."""
    try:
        file = (spec_path.parent / name).resolve(strict=True)
    except FileNotFoundError:
        raise InputError(spec_path, key, f"{spec_path.parent / name}: file not found") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long, no permission
        raise InputError(spec_path, key, f"{spec_path.parent / name}: cannot be resolved: {exc}") from None
    roots = [spec_path.parent.resolve(), *(Path(folder).resolve() for folder in allow_outside)]
    if not any(file.is_relative_to(root) for root in roots):
        raise InputError(spec_path, key, f"{name} is {file}, outside the spec's folder {roots[0]}; pass"
                                         f" --allow-outside {file.parent} to allow it")
    if not file.is_file():
        raise InputError(spec_path, key, f"{file}: not a regular file")
    return file


def load_spec(path: Path, allow_outside: Sequence[Path] = ()) -> LoadedSpec:
    """Read, validate and resolve one spec file, checking the model and samples it names
    (each confined to the spec's folder and ``allow_outside``, see :func:`spec_file`)."""
    path = Path(path)
    spec = validate(path, read_yaml(path), Spec)

    model_path = spec_file(path, "model", spec.model, allow_outside)
    try:
        model, external = load_onnx_with_data(model_path, spec.job_shapes())
        inputs, outputs = signature(model)
    except UnrankedInput as exc:
        raise InputError(path, "shapes", f"{model_path}: {exc}") from None
    except ModelError as exc:
        raise InputError(path, "model", f"{model_path}: {exc}") from None
    if "model.onnx" in external:  # the model's own name in its workspace folder (plan.py)
        raise InputError(path, "model", f"{model_path}: its external data file 'model.onnx' has the name the model"
                                        f" itself takes on the build host; rename the data file")
    info = ModelInfo(model_path, content_sha256(model_path), inputs, outputs, external,
                     {location: content_sha256(file) for location, file in external.items()}, is_quantized(model))
    labels = None
    if spec.functions is not None:
        labels = _read_labels(path, spec.functions, allow_outside)
        try:
            resolved = resolve_functions(model, spec.functions.model_dump(), labels)
        except (FunctionError, ModelError) as exc:
            raise InputError(path, "functions", str(exc)) from None
        inputs = package_inputs(inputs, resolved)

    samples = None
    if spec.samples is None or spec.shapes:
        try:
            dims = resolve_dims(inputs, spec.job_shapes())
        except ModelError as exc:
            raise InputError(path, "shapes", str(exc)) from None
    if spec.samples is not None:
        samples = spec_file(path, "samples", spec.samples, allow_outside)
        try:
            load_samples(samples, inputs, dims if spec.shapes else None)
        except ModelError as exc:
            raise InputError(path, "samples", f"{samples}: {exc}") from None
    calibration = _sample_set(path, spec.calibration, "calibration", inputs, allow_outside)
    evaluation = _sample_set(path, spec.evaluation, "evaluation", inputs, allow_outside)
    metric = None
    if spec.accelerate and spec.accelerate.gate.metric:
        metric = spec_file(path, "accelerate.gate.metric", spec.accelerate.gate.metric.rsplit(":", 1)[0], allow_outside)
    if spec.accelerate:
        _check_gate(path, spec, outputs, evaluation, calibration)
    names = [o["name"] for o in outputs]
    for name in spec.tolerance.outputs:
        if name not in names:
            hint = difflib.get_close_matches(name, names, n=1)
            raise InputError(path, f"tolerance.outputs.{name}", "not an output of the model; "
                             + (f"did you mean {hint[0]!r}?" if hint else f"its outputs: {', '.join(names)}"))
    return LoadedSpec(path, spec, info, samples, calibration, metric, labels, evaluation)


def _read_labels(path: Path, functions: Functions, allow_outside: Sequence[Path]) -> dict[str, list[str]]:
    """Label files named by top-k steps: one label per line, read here so the job carries them."""
    labels = {}
    for index, step in enumerate(functions.post):
        if isinstance(step, dict) and isinstance(step.get("topk"), dict) and step["topk"].get("labels") is not None:
            name = str(step["topk"]["labels"])
            file = spec_file(path, f"functions.post[{index}].topk.labels", name, allow_outside)
            try:
                labels[name] = file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(path, f"functions.post[{index}].topk.labels", f"{file}: cannot read: {exc}") from None
            if not labels[name]:
                raise InputError(path, f"functions.post[{index}].topk.labels", f"{file}: empty")
    return labels


def _sample_count(file: Path) -> int:
    with np.load(file, allow_pickle=False) as data:
        return len(data[data.files[0]])


def _check_gate(path: Path, spec: Spec, outputs: list[dict[str, Any]], evaluation: Path | None,
                calibration: Path | None) -> None:
    """A task gate must fit the model's outputs and have enough held-out samples."""
    gate = spec.accelerate.gate
    criterion = gate.criterion
    if criterion is None:
        return
    post = [s if isinstance(s, str) else next(iter(s)) for s in (spec.functions.post if spec.functions else [])]
    names = [o["name"] for o in outputs]
    read = gate.output or (spec.functions.output if spec.functions and spec.functions.output else None) or names[0]
    if read not in names:
        raise InputError(path, "accelerate.gate.output", f"{read!r} is not a model output ({names})")
    shape = next(o["shape"] for o in outputs if o["name"] == read)
    non_unit = [d for axis, d in enumerate(shape) if axis > 0 and d != 1]
    if criterion == "top1_agreement":
        if "detections" in post and gate.output is None:
            raise InputError(path, "accelerate.gate.top1_agreement", "has no meaning for a detector's boxes; use"
                             " box_recall (the detections function's boxes against the fp32 model's)")
        if len(non_unit) != 1:
            raise InputError(path, "accelerate.gate.top1_agreement", f"output {read!r} {shape} has no single class"
                             " axis; use sequence_agreement for sequences (a recogniser), box_recall for detections")
    if criterion == "box_recall" and "detections" not in post:
        raise InputError(path, "accelerate.gate.box_recall", "needs the detections function (functions.post), whose"
                         " boxes it compares with the fp32 model's")
    if criterion == "sequence_agreement" and len(shape) != 3:
        raise InputError(path, "accelerate.gate.sequence_agreement", f"output {read!r} {shape} is not a sequence of"
                         " class scores [batch, steps, classes]; use top1_agreement for a classifier")
    held = held_out_count(_sample_count(evaluation) if evaluation else None,
                          _sample_count(calibration) if calibration else None)
    if held < MIN_EVALUATION_SAMPLES:
        source = ("the evaluation file gives" if evaluation else
                  f"half of the {_sample_count(calibration)} calibration samples gives" if calibration else
                  "the spec has no `evaluation` or `calibration` samples:")
        raise InputError(path, f"accelerate.gate.{criterion}",
                         f"needs at least {MIN_EVALUATION_SAMPLES} held-out samples to judge a variant; {source}"
                         f" {held} (add samples to `evaluation`, or to `calibration`, half of which is held out)")


def _sample_set(path: Path, name: str | None, key: str, inputs: list[dict[str, Any]],
                allow_outside: Sequence[Path]) -> Path | None:
    """A calibration or evaluation .npz: keyed by the package's inputs, samples along axis 0."""
    if name is None:
        return None
    file = spec_file(path, key, name, allow_outside)
    if file.suffix != ".npz":
        raise InputError(path, key, f"{file}: must be an existing .npz keyed by input name")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(path, key, f"{file}: cannot read: {exc}") from None
    names = sorted(i["name"] for i in inputs)
    if sorted(arrays) != names:
        raise InputError(path, key, f"{file}: holds {sorted(arrays)}, the package's inputs are {names}")
    counts = {len(a) for a in arrays.values() if a.ndim}
    if len(counts) != 1 or 0 in counts:
        raise InputError(path, key, f"{file}: every array needs the same number (>0) of samples along axis 0")
    for spec_input in inputs:
        array = arrays[spec_input["name"]]
        if array.dtype != np.dtype(spec_input["dtype"]) or array.ndim != len(spec_input["shape"]) + 1:
            raise InputError(path, key, f"{file}: {spec_input['name']!r} is {array.dtype}"
                             f" {list(array.shape)}; needs {spec_input['dtype']} [samples, *{spec_input['shape']}]")
    return file
