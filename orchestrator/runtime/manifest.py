"""The package manifest (``manifest.json``), defined once and checked on every read.

The packager writes it, and the controller, ``modelpack inspect/run/verify``, the report
and the runtime on a device read it; a package may come from anywhere (a hostile host,
a truncated download), so every reader gets the same typed, validated view instead of
trusting a dict. ``docs/package-format.md`` is generated from these classes.

Written without ``from __future__ import annotations`` and with ``typing`` generics on
purpose: the runtime ships to devices, and the field types must evaluate on the oldest
Python a device may have.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union, get_args, get_origin, get_type_hints

SCHEMA_VERSION = 1


class ManifestError(ValueError):
    """The manifest does not follow the schema: ``where`` is the key path."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def _doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    if default is not dataclasses.MISSING:
        return field(default=default, metadata={"doc": text})
    return field(metadata={"doc": text})


@dataclass(frozen=True)
class Target:
    """The platform the package is for, and the build host platform it was made on."""

    name: str = _doc("target name, e.g. `linux-x86_64`")
    os: str = _doc("operating system the package runs on")
    arch: str = _doc("CPU architecture the package runs on")
    build_os: str = _doc("operating system of the host that built and self-tested it")
    build_arch: str = _doc("architecture of that host")


@dataclass(frozen=True)
class Tensor:
    """One input or output of the package."""

    name: str = _doc("tensor name as the engine and `Session.run` use it")
    dtype: str = _doc("NumPy dtype name, or `string` for text outputs (labels)")
    shape: List[Union[int, str]] = _doc("sizes, and names for dynamic dimensions")
    range: Optional[List[Optional[List[Optional[int]]]]] = _doc(
        "inputs: per axis null (fixed) or [min, max] a dynamic dimension accepts (max null: no limit)", None)


@dataclass(frozen=True)
class Artifact:
    """One file (or bundle) the selected engine runs, or that it needs beside it."""

    path: str = _doc("relative to the package root; never absolute or `..`")
    format: str = _doc("file format, e.g. `onnx`, `ort`, `openvino-ir`, `mnn`, `ncnn`, `mlpackage`")
    engine: str = _doc("the engine that runs it")
    role: str = _doc("`primary`, `alternate` (another artifact the self-test also runs) or `auxiliary`")
    runtime: Dict[str, Any] = _doc("engine options the runtime applies when loading it", factory=dict)


@dataclass(frozen=True)
class Source:
    """The ONNX model the package was made from."""

    sha256: str = _doc("sha256 of the source model file")
    filename: Optional[str] = _doc("its file name", None)
    opsets: Optional[Dict[str, int]] = _doc("opset per domain", None)
    producer: Optional[str] = _doc("producer name and version recorded in the model", None)
    inputs: Optional[List[Dict[str, Any]]] = _doc("the source model's own signature", None)
    outputs: Optional[List[Dict[str, Any]]] = _doc("the source model's own outputs", None)


@dataclass(frozen=True)
class SampleSize:
    """Golden samples at one more checked size."""

    point: str = _doc("`min`, `max` or `probe`")
    inputs: Dict[str, str] = _doc("input name -> .npy file")
    reference: Dict[str, str] = _doc("output name -> .npy file")


@dataclass(frozen=True)
class Samples:
    """Golden inputs and the reference outputs the self-test compares against."""

    inputs: Dict[str, str] = _doc("input name -> .npy file at the benchmark size")
    reference: Dict[str, str] = _doc("output name -> .npy file at the benchmark size")
    sizes: List[SampleSize] = _doc("the same at every other checked size", factory=list)
    origin: Any = _doc("the spec's samples file, or seeded random inputs and how each was made", None)
    reference_engine: Optional[str] = _doc("what produced the reference outputs", None)


@dataclass(frozen=True)
class Tolerance:
    """The accuracy gate every output is held to."""

    atol: float = _doc("absolute tolerance per element")
    rtol: float = _doc("relative tolerance per element")


@dataclass(frozen=True)
class SelfTest:
    """The self-test of the packaged artifacts through the shipped runtime."""

    passed: bool = _doc("whether every runnable artifact matched the reference")
    artifacts: Dict[str, Any] = _doc("artifact path -> per-output comparison")
    ran_on: Optional[str] = _doc("os/arch of the machine that ran it", None)
    target_os: Optional[str] = _doc("the package's OS", None)
    on_target_os: Optional[bool] = _doc("whether that was the target's own OS", None)
    not_checked: Optional[List[str]] = _doc("what could not be checked there", None)


@dataclass(frozen=True)
class Manifest:
    """`manifest.json` at the package root."""

    schema_version: int = _doc(f"the manifest schema; this runtime reads {SCHEMA_VERSION}")
    name: str = _doc("package name from the spec")
    version: str = _doc("package version from the spec")
    target: Target = _doc("see Target")
    source: Source = _doc("see Source")
    inputs: List[Tensor] = _doc("the package's inputs")
    outputs: List[Tensor] = _doc("the package's outputs (post-processing included)")
    artifacts: List[Artifact] = _doc("what the selected engine runs; at least one")
    engines: Dict[str, Dict[str, Any]] = _doc("engine -> `version` the package was built and tested with")
    files: Dict[str, str] = _doc("sha256 of every other file in the package")
    candidates: List[Dict[str, Any]] = _doc("every compiler and variant tried: status, reason, accuracy,"
                                            " latency, size, held-out loss", factory=list)
    selection: Dict[str, Any] = _doc("the policy, the winner, whether measured and whether under emulation",
                                     factory=dict)
    selftest: Optional[SelfTest] = _doc("see SelfTest", None)
    samples: Optional[Samples] = _doc("see Samples", None)
    tolerance: Optional[Tolerance] = _doc("see Tolerance", None)
    shapes: Optional[Dict[str, Any]] = _doc("`fixed_shapes_policy`, `static`, `checked` sizes, `pinned` dims", None)
    normalisation: Optional[Dict[str, Any]] = _doc("which model each kind was, dropped steps, `compiled_from`", None)
    compiler: Optional[Dict[str, Any]] = _doc("what built the shipped artifact: name, version, options,"
                                              " variant, reproducible", None)
    provenance: Optional[Dict[str, Any]] = _doc("host, transport, image, emulation, packager version,"
                                                " build platform", None)
    acceleration: Optional[Dict[str, Any]] = _doc("variants tried, the gate, what it read, the held-out split", None)
    functions: Optional[Dict[str, Any]] = _doc("pre/post-processing steps, who applies them, their check", None)
    android: Optional[Dict[str, Any]] = _doc("ABI, minimum API level, runtime, what was not device-tested", None)
    ios: Optional[Dict[str, Any]] = _doc("runtime, execution providers, Core ML state, what was not"
                                         " device-tested", None)

    @classmethod
    def from_json(cls, data: Any) -> "Manifest":
        """The typed manifest; raises ManifestError naming the first key that is wrong.
        Keys this schema does not know are ignored (a newer packager may add sections)."""
        if not isinstance(data, dict):
            raise ManifestError("manifest", "not a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError("schema_version", f"{data.get('schema_version')!r} is not supported by this"
                                                  f" runtime (supports {SCHEMA_VERSION})")
        manifest = _parse(cls, data, "manifest")
        if not manifest.artifacts:
            raise ManifestError("artifacts", "empty; a package ships at least one artifact")
        return manifest


def _parse(kind: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type ``kind`` (dataclasses built field by field)."""
    if kind is Any:
        return value
    origin, args = get_origin(kind), get_args(kind)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _parse(option, value, where)
            except ManifestError:
                continue
        return _parse(options[-1], value, where)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ManifestError(where, f"expected an object, got {type(value).__name__}")
        hints = get_type_hints(kind)
        found = {}
        for item in dataclasses.fields(kind):
            if item.name in value:
                found[item.name] = _parse(hints[item.name], value[item.name], f"{where}.{item.name}")
            elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise ManifestError(f"{where}.{item.name}", "missing")
        return kind(**found)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ManifestError(where, f"expected a list, got {type(value).__name__}")
        return [_parse(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ManifestError(where, f"expected an object, got {type(value).__name__}")
        return {k: _parse(args[1], v, f"{where}.{k}") for k, v in value.items()}
    wanted = {str: (str,), bool: (bool,), int: (int,), float: (int, float)}[kind]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, wanted):
        raise ManifestError(where, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _type_name(kind: Any) -> str:
    origin, args = get_origin(kind), get_args(kind)
    if origin is Union:
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin in (list, List):
        return f"list of {_type_name(args[0])}"
    if origin in (dict, Dict):
        return f"object of {_type_name(args[1])}"
    if kind is Any:
        return "any"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(kind, getattr(kind, "__name__", str(kind)))


def reference() -> str:
    """Markdown tables of every manifest class: key, type, required, meaning."""
    sections = []
    for kind in (Manifest, Target, Source, Tensor, Artifact, Samples, SampleSize, Tolerance, SelfTest):
        hints = get_type_hints(kind)
        rows = ["| key | type | required | meaning |", "|---|---|---|---|"]
        for item in dataclasses.fields(kind):
            required = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
            rows.append(f"| `{item.name}` | {_type_name(hints[item.name])} | {'yes' if required else 'no'}"
                        f" | {item.metadata['doc']} |")
        sections.append(f"### {kind.__name__}\n\n{kind.__doc__}\n\n" + "\n".join(rows))
    return "\n\n".join(sections) + "\n"
