"""What each packaging step (packager/build.py) hands the next, and the manifest
builder (packager/manifest.py) reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ..runtime.checks import Comparison, Tolerance
from .compilers import Compiler
from .environment import CompileEnvironment
from .evaluate import GateTensors
from .functions import Resolved
from .golden import Golden
from .selection import Benchmark, Candidate


@dataclass
class Checked:
    """The job fits this host: its environment, the model file, the compilers, a clean
    work folder."""

    env: CompileEnvironment
    model_path: Path
    compilers: dict[str, Compiler]
    work: Path
    #: what was written to make ``model_path`` standard ONNX (empty: it is the model as it arrived)
    standard: list[str] = field(default_factory=list)
    #: the ZipMap outputs of the model as it arrived, with their classes in column order:
    #: the standard copy gives each as the tensor of its maps' values
    zipmaps: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Reference:
    """The model as the package will carry it (functions fused), its signature, and the
    reference outputs at every checked size."""

    model: onnx.ModelProto
    source_inputs: list[dict[str, Any]]
    source_outputs: list[dict[str, Any]]
    package_inputs: list[dict[str, Any]]
    graph_path: Path
    graph_names: list[str]
    output_names: list[str]
    outputs: list[dict[str, Any]]
    declared_outputs: dict[str, list[int | str]]
    dynamic: dict[str, list[int | str]]
    golden: Golden
    sizes: list[dict[str, Any]]
    tensors: GateTensors
    taps: list[str]
    resolved: Resolved | None = None
    runtime_steps: dict[str, Any] | None = None
    fusion_notes: list[str] = field(default_factory=list)
    function_check: Comparison | None = None
    evaluation: dict[str, str] | None = None
    calibration: Path | None = None
    evaluation_record: dict[str, Any] | None = None
    #: a quantised model's gate, measured (Job.measure_tolerance), and how it was found
    measured_tolerance: Tolerance | None = None
    tolerance_basis: str | None = None
    #: outputs the golden samples left empty at every size -> what the gates read for them
    empty_outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Selected:
    """The test script's verdict: every candidate weighed, and the one to ship."""

    candidates: list[Candidate]
    winner: Candidate
    measured: bool
    #: the measuring's verdict, rounds and load (None: nothing was benchmarked)
    benchmark: Benchmark | None = None
    #: the runtime-settings search (select.tune): what was tried and chosen
    tuning: dict[str, Any] | None = None
