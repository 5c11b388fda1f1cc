"""MNN: a ``.mnn`` model from the converter shipped in the ``MNN`` wheel."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .. import reproducible
from ..job import JobTarget
from . import Artifact, BaseCompiler, CompileContext, CompileResult, choice, converter_failed


@dataclass
class MnnOptions:
    #: store weights as fp16 (accuracy-gated)
    fp16: bool = False

    def validate(self) -> None:
        choice("fp16", self.fp16, (True, False))


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
        argv = [sys.executable, "-c", "import sys; from MNN.tools.mnnconvert import main; sys.exit(main())",
                "-f", "ONNX", "--modelFile", str(model), "--MNNModel", "model/model.mnn", "--bizCode", "modelpack"]
        if options.fp16:
            argv.append("--fp16")
        proc = reproducible.run(argv, cwd=str(root))
        if proc.returncode != 0 or not (out_dir / "model.mnn").is_file() or "Converted Success" not in proc.stdout:
            raise converter_failed("mnnconvert", proc.returncode, proc.stdout + proc.stderr)
        runtime = {"inputs": [i["name"] for i in context.inputs], "outputs": [o["name"] for o in context.outputs]}
        return CompileResult([Artifact("model/model.mnn", "mnn", self.engine, "primary", runtime)],
                             reproducible=proc.reproducible)
