"""OpenVINO: IR ``.xml`` + ``.bin`` from ``openvino.convert_model``.

Weights are saved in full precision (``compress_to_fp16=False``): the default fp16
weight compression is a reduced-precision variant, which must be asked for and gated
like any other. The inference precision is recorded for the runtime because OpenVINO
otherwise picks bf16 by itself on CPUs that have it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..causes import exception_cause
from ..job import JobTarget
from .base import Artifact, BaseCompiler, CompileContext, CompileResult, CompilerError, choice

_PRECISIONS = ("f32", "bf16", "f16")


@dataclass
class OpenVinoOptions:
    #: INFERENCE_PRECISION_HINT used when the package runs (f32 gives exact results)
    precision: str = "f32"
    #: store weights as fp16 in the .bin (halves the size; accuracy-gated)
    compress_weights: bool = False

    def validate(self) -> None:
        choice("precision", self.precision, _PRECISIONS)
        choice("compress_weights", self.compress_weights, (True, False))


class OpenVinoCompiler(BaseCompiler):
    name = "openvino"
    engine = "openvino"
    distribution = "openvino"
    # OpenVINO's CPU plugin exists for these; it has no iOS or Android runtime.
    targets = frozenset({"linux-x86_64", "linux-aarch64", "windows-x86_64"})
    options_type = OpenVinoOptions

    def compile(self, model: Path, root: Path, target: JobTarget, options: OpenVinoOptions,
                context: CompileContext) -> CompileResult:
        import openvino as ov

        out_dir = root / "model"
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            converted = ov.convert_model(str(model))
            ov.save_model(converted, str(out_dir / "model.xml"), compress_to_fp16=options.compress_weights)
        except Exception as exc:  # OpenVINO raises its own exception types
            raise CompilerError(f"OpenVINO conversion failed: {exception_cause(exc)}") from None
        runtime = {"precision": options.precision}
        return CompileResult([
            Artifact("model/model.xml", "openvino-ir", self.engine, "primary", runtime),
            Artifact("model/model.bin", "openvino-weights", self.engine, "auxiliary"),
        ])
