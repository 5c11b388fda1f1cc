"""onnxruntime: an offline-optimised ``.onnx`` plus an ORT-format ``.ort`` model.

The ``.onnx`` is optimised at a hardware-independent level so it stays portable (a
model saved at ORT's "all" level can hold CPU-specific layouts). The ``.ort`` uses the
"Fixed" optimisation style for the target's CPU family and comes with the
``required_operators.config`` that a reduced (mobile) onnxruntime build needs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import reproducible
from ..job import JobTarget
from .base import Artifact, BaseCompiler, CompileContext, CompileResult, CompilerError, choice, converter_failed

_LEVELS = ("basic", "extended")
#: target operating systems whose onnxruntime builds are the reduced mobile ones
MOBILE = ("android", "ios")
_ORT_PLATFORM = {"x86_64": "amd64", "aarch64": "arm"}
#: iOS packages run on the CoreML execution provider where it takes the model's nodes
#: (ML Program format, every compute unit), the CPU provider doing the rest
COREML_PROVIDERS = [["CoreMLExecutionProvider", {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"}],
                    "CPUExecutionProvider"]


@dataclass
class OnnxRuntimeOptions:
    #: offline graph optimisation level for the shipped .onnx ("basic" is portable)
    optimization: str = "basic"
    #: also produce an ORT-format model and its required-operators config
    ort_format: bool = True

    def validate(self) -> None:
        choice("optimization", self.optimization, _LEVELS)
        choice("ort_format", self.ort_format, (True, False))


class OnnxRuntimeCompiler(BaseCompiler):
    name = "onnxruntime"
    engine = "onnxruntime"
    distribution = "onnxruntime"
    targets = frozenset({"linux-x86_64", "linux-aarch64", "android-arm64", "windows-x86_64", "ios-arm64"})
    options_type = OnnxRuntimeOptions
    #: onnxruntime evaluates every If left in the graph on every call
    folded = True

    def compile(self, model: Path, package_root: Path, target: JobTarget, options: OnnxRuntimeOptions,
                context: CompileContext) -> CompileResult:
        import onnxruntime as ort

        out_dir = package_root / "model"
        out_dir.mkdir(parents=True, exist_ok=True)
        optimised = out_dir / "model.onnx"
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }[options.optimization]
        session_options.optimized_model_filepath = str(optimised)
        session_options.log_severity_level = 3
        try:
            ort.InferenceSession(str(model), session_options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            raise CompilerError(f"onnxruntime could not load the model: {exc}") from None
        artifacts = [Artifact("model/model.onnx", "onnx", self.engine, "primary")]
        reproducible = True
        if options.ort_format:
            ort_artifacts, reproducible = self._ort_format(optimised, out_dir, target)
            artifacts += ort_artifacts
        if target.os == "ios":
            for artifact in artifacts:
                artifact.runtime["execution_providers"] = COREML_PROVIDERS
        if target.os in MOBILE:
            artifacts.append(self._mobile_usability(optimised, out_dir))
        return CompileResult(artifacts, reproducible=reproducible)

    def _mobile_usability(self, optimised: Path, out_dir: Path) -> Artifact:
        """onnxruntime's own report on how much of the model NNAPI (Android) and CoreML
        (iOS) can take, shipped so that whoever integrates the package can decide."""
        proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability",
                               optimised.name], cwd=str(out_dir), capture_output=True, text=True)
        lines = [line.removeprefix("INFO:  ").rstrip() for line in (proc.stdout + proc.stderr).splitlines()]
        if proc.returncode != 0 or not any("NNAPI" in line for line in lines):
            raise converter_failed("the ORT mobile usability check", proc.returncode, proc.stdout + proc.stderr)
        (out_dir / "mobile_usability.txt").write_text("\n".join(lines).strip() + "\n")
        return Artifact("model/mobile_usability.txt", "ort-mobile-usability", self.engine, "auxiliary")

    def _ort_format(self, optimised: Path, out_dir: Path, target: JobTarget) -> tuple[list[Artifact], bool]:
        # Fixed paths (not tempfile names) keep the converter's heap layout, and so its
        # output bytes, identical between runs; see packager/reproducible.py.
        work = out_dir.parent.parent / "ort-convert"
        if work.exists():
            shutil.rmtree(work)
        (work / "out").mkdir(parents=True)
        source = work / "model.onnx"
        shutil.copyfile(optimised, source)
        argv = [
            sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
            "--optimization_style", "Fixed",
            "--target_platform", _ORT_PLATFORM.get(target.arch, "arm"),
            "--output_dir", "out",
            "model.onnx",
        ]
        proc = reproducible.run(argv, cwd=str(work))
        produced = work / "out" / "model.ort"
        if proc.returncode != 0 or not produced.is_file():
            raise converter_failed("ORT format conversion", proc.returncode, proc.stdout + proc.stderr)
        shutil.copyfile(produced, out_dir / "model.ort")
        config = (work / "out" / "model.required_operators.config").read_text()
        shutil.rmtree(work)
        # The tool writes the model's absolute path into a comment; keep the package reproducible.
        lines = [ln for ln in config.splitlines() if not ln.startswith("# - ")]
        lines = [ln.replace("model/s:", "model/model.ort:") for ln in lines]
        (out_dir / "required_operators.config").write_text("\n".join(lines) + "\n")
        return [
            Artifact("model/model.ort", "ort", self.engine, "alternate"),
            Artifact("model/required_operators.config", "ort-required-operators", self.engine, "auxiliary"),
        ], proc.reproducible
