"""The package manifest (``manifest.json``), defined once and checked on every read.

The packager writes it, and the controller, ``modelpack inspect/run/verify``, the report
and the runtime on a device read it; a package may come from anywhere (a hostile host,
a truncated download), so every reader gets the same typed, validated view instead of
trusting a dict. ``docs/package-format.md`` is generated from these classes.

Written without ``from __future__ import annotations`` and with ``typing`` generics on
purpose: the runtime ships to devices, and the field types must evaluate on the oldest
Python a device may have.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from .schema import SchemaError, documented, parse, tables

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Target:
    """The platform the package is for, and the build host platform it was made on."""

    name: str = documented("target name, e.g. `linux-x86_64`")
    os: str = documented("operating system the package runs on")
    arch: str = documented("CPU architecture the package runs on")
    build_os: str = documented("operating system of the host that built and self-tested it")
    build_arch: str = documented("architecture of that host")


@dataclass(frozen=True)
class Tensor:
    """One input or output of the package."""

    name: str = documented("tensor name as the engine and `Session.run` use it")
    dtype: str = documented("NumPy dtype name, or `string` for text outputs (labels)")
    shape: List[Union[int, str]] = documented("sizes, and names for dynamic dimensions")
    range: Optional[List[Optional[List[Optional[int]]]]] = documented(
        "inputs: per axis null (fixed) or [min, max] a dynamic dimension accepts (max null: no limit)", None)


@dataclass(frozen=True)
class Artifact:
    """One file (or bundle) the selected engine runs, or that it needs beside it."""

    path: str = documented("relative to the package root; never absolute or `..`")
    format: str = documented("file format, e.g. `onnx`, `ort`, `openvino-ir`, `mnn`, `ncnn`, `mlpackage`")
    engine: str = documented("the engine that runs it")
    role: str = documented("`primary`, `alternate` (another artifact the self-test also runs) or `auxiliary`")
    runtime: Dict[str, Any] = documented("engine options the runtime applies when loading it", factory=dict)


@dataclass(frozen=True)
class Source:
    """The ONNX model the package was made from."""

    sha256: str = documented("sha256 of the source model file")
    filename: Optional[str] = documented("its file name", None)
    data: Optional[Dict[str, str]] = documented("its external data files (weights kept beside the graph) by the"
                                                " location the model names them with: sha256 of each", None)
    instructions_sha256: Optional[str] = documented("sha256 of the packaging instructions it was built from (the"
                                                    " job file without provenance)", None)
    opsets: Optional[Dict[str, int]] = documented("opset per domain", None)
    producer: Optional[str] = documented("producer name and version recorded in the model", None)
    inputs: Optional[List[Dict[str, Any]]] = documented("the source model's own signature", None)
    outputs: Optional[List[Dict[str, Any]]] = documented("the source model's own outputs", None)


@dataclass(frozen=True)
class SampleSize:
    """Golden samples at one more checked size."""

    point: str = documented("`min`, `max` or `probe`")
    inputs: Dict[str, str] = documented("input name -> .npy file")
    reference: Dict[str, str] = documented("output name -> .npy file")


@dataclass(frozen=True)
class Samples:
    """Golden inputs and the reference outputs the self-test compares against."""

    inputs: Dict[str, str] = documented("input name -> .npy file at the benchmark size")
    reference: Dict[str, str] = documented("output name -> .npy file at the benchmark size")
    sizes: List[SampleSize] = documented("the same at every other checked size", factory=list)
    origin: Any = documented("the spec's samples file, or seeded random inputs and how each was made", None)
    reference_engine: Optional[str] = documented("what produced the reference outputs", None)
    empty_outputs: Optional[Dict[str, str]] = documented(
        "outputs the samples left empty at every size (their size depends on the data, as after NMS) ->"
        " what the accuracy gates read for them instead, or that nothing checked them", None)


@dataclass(frozen=True)
class OutputTolerance:
    """One output's own gate."""

    atol: float = documented("absolute tolerance per element of this output")
    rtol: float = documented("relative tolerance per element of this output")


@dataclass(frozen=True)
class Tolerance:
    """The accuracy gate every output is held to."""

    atol: float = documented("absolute tolerance per element")
    rtol: float = documented("relative tolerance per element")
    outputs: Optional[Dict[str, OutputTolerance]] = documented(
        "outputs held to a gate of their own, by name (the spec's tolerance.outputs, or each output's deviation"
        " where the packager measured the gate); the others are held to atol and rtol", None)
    basis: Optional[str] = documented("how the gate was set, where the packager measured it (a quantised model)",
                                      None)


@dataclass(frozen=True)
class SelfTest:
    """The self-test of the packaged artifacts through the shipped runtime."""

    passed: bool = documented("whether every runnable artifact matched the reference")
    artifacts: Dict[str, Any] = documented("artifact path -> per-output comparison")
    ran_on: Optional[str] = documented("os/arch of the machine that ran it", None)
    target_os: Optional[str] = documented("the package's OS", None)
    on_target_os: Optional[bool] = documented("whether that was the target's own OS", None)
    not_checked: Optional[List[str]] = documented("what could not be checked there", None)


@dataclass(frozen=True)
class Manifest:
    """`manifest.json` at the package root."""

    schema_version: int = documented(f"the manifest schema; this runtime reads {SCHEMA_VERSION}")
    name: str = documented("package name from the spec")
    version: str = documented("package version from the spec")
    target: Target = documented("see Target")
    source: Source = documented("see Source")
    inputs: List[Tensor] = documented("the package's inputs")
    outputs: List[Tensor] = documented("the package's outputs (post-processing included)")
    artifacts: List[Artifact] = documented("what the selected engine runs; at least one")
    engines: Dict[str, Dict[str, Any]] = documented("engine -> `version` the package was built and tested with")
    files: Dict[str, str] = documented("sha256 of every other file in the package")
    candidates: List[Dict[str, Any]] = documented("every compiler and variant tried: status, reason, accuracy,"
                                            " latency, size, held-out loss", factory=list)
    selection: Dict[str, Any] = documented("the policy, the winner, whether measured and whether under emulation,"
                                           " and the benchmark: rounds, decision and its 95 % confidence,"
                                           " each candidate against the leader, and the host load per round",
                                     factory=dict)
    selftest: Optional[SelfTest] = documented("see SelfTest", None)
    samples: Optional[Samples] = documented("see Samples", None)
    tolerance: Optional[Tolerance] = documented("see Tolerance", None)
    shapes: Optional[Dict[str, Any]] = documented("`fixed_shapes_policy`, `static`, `checked` sizes, `pinned` dims", None)
    normalisation: Optional[Dict[str, Any]] = documented(
        "which model each kind was, dropped steps, `compiled_from`, and `standard`: what was written to make the"
        " source model standard ONNX, such as a ZipMap output given as the tensor of its maps' values with its"
        " classes in column order (absent when nothing was)", None)
    compiler: Optional[Dict[str, Any]] = documented("what built the shipped artifact: name, version, options,"
                                              " variant, reproducible", None)
    provenance: Optional[Dict[str, Any]] = documented("host, transport, image, emulation, packager version,"
                                                " build platform", None)
    acceleration: Optional[Dict[str, Any]] = documented("variants tried, the gate, what it read, the held-out split", None)
    functions: Optional[Dict[str, Any]] = documented("pre/post-processing steps, who applies them, their check", None)
    android: Optional[Dict[str, Any]] = documented("ABI, minimum API level, runtime, what was not device-tested", None)
    ios: Optional[Dict[str, Any]] = documented("runtime, execution providers, Core ML state, what was not"
                                         " device-tested", None)

    @classmethod
    def from_json(cls, data: Any) -> "Manifest":
        """The typed manifest; raises SchemaError naming the first key that is wrong.
        Keys this schema does not know are ignored (a newer packager may add sections)."""
        if not isinstance(data, dict):
            raise SchemaError("manifest", "not a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise SchemaError("schema_version", f"{data.get('schema_version')!r} is not supported by this"
                                                  f" runtime (supports {SCHEMA_VERSION})")
        manifest = parse(cls, data, "manifest")
        if not manifest.artifacts:
            raise SchemaError("artifacts", "empty; a package ships at least one artifact")
        return manifest


def reference() -> str:
    """Markdown tables of every manifest class."""
    return tables([Manifest, Target, Source, Tensor, Artifact, Samples, SampleSize, Tolerance, SelfTest])
