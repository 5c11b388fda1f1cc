"""ncnn: ``.param`` + ``.bin`` through pnnx, which reads ONNX without torch.

pnnx is installed with ``--no-deps`` (its wheel declares a 5 GB torch it does not need
for ONNX) and its native binary is called directly. pnnx names blobs in0.., out0.. in
graph order; that mapping and the output shapes go to the runtime.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import reproducible
from ..job import JobTarget
from ..normalise import as_float32
from ..signature import load_onnx
from .base import Artifact, BaseCompiler, CompileContext, CompileResult, CompilerError, choice, converter_failed


def _pnnx_binary() -> Path | None:
    # find the package without importing it: its __init__ imports torch
    spec = importlib.util.find_spec("pnnx")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).with_name("pnnx.exe" if os.name == "nt" else "pnnx")
    return binary if binary.is_file() else None


#: the newest ONNX IR version the onnxruntime inside pnnx reads
PNNX_IR_VERSION = 13


@dataclass
class NcnnOptions:
    #: let ncnn store and compute in fp16 where the CPU can (accuracy-gated)
    fp16: bool = False

    def validate(self) -> None:
        choice("fp16", self.fp16, (True, False))


class NcnnCompiler(BaseCompiler):
    name = "ncnn"
    engine = "ncnn"
    distribution = "ncnn"
    targets = frozenset({"linux-x86_64", "linux-aarch64", "android-arm64", "windows-x86_64", "ios-arm64"})
    options_type = NcnnOptions

    def version(self) -> str | None:
        return super().version() if _pnnx_binary() is not None else None

    def compile(self, model: Path, root: Path, target: JobTarget, options: NcnnOptions,
                context: CompileContext) -> CompileResult:
        binary = _pnnx_binary()
        if binary is None:
            raise CompilerError("pnnx is not installed")
        untakeable = _untakeable_inputs(context.inputs)
        if untakeable:
            raise CompilerError(untakeable)
        work = root / "pnnx"
        work.mkdir(parents=True, exist_ok=True)
        source = load_onnx(model)
        # pnnx leaves float16 operators unconverted and refuses doubles: ncnn gets float32
        # (fp16 is its own option)
        readable = as_float32(source) or source
        if readable is source and source.ir_version <= PNNX_IR_VERSION:
            shutil.copyfile(model, work / "model.onnx")
        else:
            import onnx

            # the onnxruntime inside pnnx refuses newer IR versions even where the model uses
            # nothing they added; anything it cannot read still fails there, with its reason
            readable.ir_version = min(readable.ir_version, PNNX_IR_VERSION)
            onnx.save(readable, str(work / "model.onnx"))
        # half-precision and double inputs were made float32 with the rest
        kinds = {"float32": "f32", "float16": "f32", "bfloat16": "f32", "float64": "f32", "int64": "i64",
                 "int32": "i32", "uint8": "u8", "int8": "i8"}

        def shapes(inputs: list[dict]) -> str:
            return ",".join("[" + ",".join(str(d) for d in i["shape"]) + "]" + kinds.get(i["dtype"], "f32")
                            for i in inputs)

        notes: list[str] = []
        argv = [str(binary), "model.onnx", f"inputshape={shapes(context.inputs)}", f"fp16={int(options.fp16)}"]
        if context.alternate_inputs:  # a second size makes pnnx keep reshapes dynamic
            proc = self._convert([*argv, f"inputshape2={shapes(context.alternate_inputs)}"], work)
            unusable = _unloadable(work / "model.ncnn.param")
            if not unusable:
                return self._result(work, root, context, options, proc.reproducible, notes)
            notes.append(f"pnnx could not keep the input sizes dynamic ({unusable}); converted for the"
                         f" benchmark size only")
        proc = self._convert(argv, work)
        unusable = _unloadable(work / "model.ncnn.param")
        if unusable:
            raise CompilerError(f"pnnx converted the model, but ncnn cannot load the result: {unusable}")
        return self._result(work, root, context, options, proc.reproducible, notes)

    @staticmethod
    def _convert(argv: list[str], work: Path) -> reproducible.Completed:
        for stale in work.glob("model.*ncnn*"):
            stale.unlink()
        proc = reproducible.run(argv, cwd=str(work))
        param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
        if proc.returncode != 0 or not param.is_file() or not weights.is_file():
            raise converter_failed("pnnx", proc.returncode, proc.stdout + proc.stderr)
        return proc

    def _result(self, work: Path, root: Path, context: CompileContext, options: NcnnOptions,
                is_reproducible: bool, notes: list[str]) -> CompileResult:
        param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
        out_dir = root / "model"
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(param, out_dir / "model.param")
        shutil.copyfile(weights, out_dir / "model.bin")
        shutil.rmtree(work)
        runtime = {
            "inputs": {i["name"]: f"in{n}" for n, i in enumerate(context.inputs)},
            "outputs": {o["name"]: f"out{n}" for n, o in enumerate(context.outputs)},
            "output_shapes": {o["name"]: o["shape"] for o in context.outputs},
            "fp16": options.fp16,
        }
        return CompileResult([
            Artifact("model/model.param", "ncnn-param", self.engine, "primary", runtime),
            Artifact("model/model.bin", "ncnn-weights", self.engine, "auxiliary"),
        ], reproducible=is_reproducible, notes=notes)


def _untakeable_inputs(inputs: list[dict]) -> str | None:
    """Why ncnn cannot take these inputs, or None. ncnn's tensors have 1 to 4 float or
    integer dimensions: pnnx is given no shape for a 0-d input ("input_shape expect 3
    tensors but got 2"), and has no bool type ("unsupported tensor elem data type 9")."""
    scalar = [i["name"] for i in inputs if not i["shape"]]
    boolean = [i["name"] for i in inputs if i["dtype"] == "bool"]
    problems = ([f"ncnn has no 0-d tensors, and pnnx takes no shape for the 0-d input(s) {scalar}"] if scalar else []) \
        + ([f"ncnn has no bool tensors: input(s) {boolean} are bool"] if boolean else [])
    return "; ".join(problems) or None


def _unloadable(param: Path) -> str | None:
    """Why ncnn cannot load a pnnx ``.param``: a layer type ncnn does not have (one pnnx
    left in its own dialect, such as the shape expressions of a dynamic conversion, or
    an ONNX op it passed through unconverted), or None."""
    import ncnn

    for line in param.read_text(encoding="utf-8", errors="replace").splitlines()[2:]:
        layer = line.split(maxsplit=1)[0] if line.strip() else ""
        if layer and ncnn.layer_to_index(layer) < 0:
            return f"layer {layer} is not an ncnn layer"
    return None
