"""MNN: a ``.mnn`` model from the converter shipped in the ``MNN`` wheel."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import reproducible
from ..job import JobTarget
from .base import Artifact, BaseCompiler, CompileContext, CompileResult, choice, converter_failed


@dataclass
class MnnOptions:
    #: store weights as fp16 (accuracy-gated)
    fp16: bool = False
    #: store weights quantised to this many bits (2-8; 0 keeps them as float; accuracy-gated)
    weight_quant_bits: int = 0

    def validate(self) -> None:
        choice("fp16", self.fp16, (True, False))
        choice("weight_quant_bits", self.weight_quant_bits, (0, 2, 3, 4, 5, 6, 7, 8))


class MnnCompiler(BaseCompiler):
    name = "mnn"
    engine = "mnn"
    distribution = "MNN"
    # the .mnn file is portable; MNN runtimes exist for all of these
    targets = frozenset({"linux-x86_64", "linux-aarch64", "android-arm64", "windows-x86_64", "ios-arm64"})
    options_type = MnnOptions

    def compile(self, model: Path, root: Path, target: JobTarget, options: MnnOptions,
                context: CompileContext) -> CompileResult:
        out_dir = root / "model"
        out_dir.mkdir(parents=True, exist_ok=True)
        # The converter's C extension directly: MNN.tools.mnnconvert imports a telemetry
        # logger that pip-installs packages and reports each conversion to a remote server.
        # Success is judged below by the converter's message and its output file.
        argv = [sys.executable, "-c", "import sys, MNN, _tools; _tools.mnnconvert(sys.argv)",
                "-f", "ONNX", "--modelFile", str(model), "--MNNModel", "model/model.mnn", "--bizCode", "modelpack"]
        if options.fp16:
            argv.append("--fp16")
        if options.weight_quant_bits:
            argv += ["--weightQuantBits", str(options.weight_quant_bits)]
        proc = reproducible.run(argv, cwd=str(root))
        if proc.returncode != 0 or not (out_dir / "model.mnn").is_file() or "Converted Success" not in proc.stdout:
            raise converter_failed("mnnconvert", proc.returncode, proc.stdout + proc.stderr)
        runtime: dict[str, Any] = {"inputs": [i["name"] for i in context.inputs],
                                   "outputs": [o["name"] for o in context.outputs]}
        # MNN shapes an empty result wrongly where the data decides the length (a fused
        # NMS that found nothing: boxes [0, 2100, 4] for [0, 4]); the runner takes these
        decided = {o["name"]: o["shape"] for o in context.outputs if any(isinstance(d, str) for d in o["shape"])}
        if decided:
            runtime["data_dependent_shapes"] = decided
        return CompileResult([Artifact("model/model.mnn", "mnn", self.engine, "primary", runtime)],
                             reproducible=proc.reproducible)
