"""Core ML: an ``.mlpackage`` for iOS, by the only route that exists from ONNX.

coremltools has had no ONNX frontend since version 6, so the model goes ONNX →
onnx2torch → a traced TorchScript module → coremltools (ML Program). With Xcode on the
build host, ``xcrun coremlcompiler`` compiles it to the ``.mlmodelc`` an app loads
directly; without Xcode the package ships the uncompiled ``.mlpackage`` and says why
(an app can compile it at first launch with ``MLModel.compileModel(at:)``).
Core ML runs only on Apple platforms, so this compiler serves ``ios-arm64`` packages
built on a macOS host, where the self-test runs the model through Core ML itself.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..causes import root_cause
from ..job import JobTarget
from .base import Artifact, BaseCompiler, CompileContext, CompileResult, CompilerError, choice

_FORMATS = ("mlprogram", "neuralnetwork")
_PRECISIONS = ("float32", "float16")
_DEPLOYMENT = ("iOS15", "iOS16", "iOS17", "iOS18")
_DTYPES = {"float32": "float32", "float16": "float16", "int32": "int32", "int64": "int32", "uint8": "uint8"}


@dataclass
class CoreMlOptions:
    #: "mlprogram" (iOS 15+, recommended) or the older "neuralnetwork"
    format: str = "mlprogram"
    #: the oldest iOS the model must load on (decides the Core ML operator set)
    minimum_deployment_target: str = "iOS16"
    #: precision Core ML computes in (ML Program only)
    compute_precision: str = "float32"
    #: compile to .mlmodelc with `xcrun coremlcompiler` when Xcode is present
    compile: bool = True

    def validate(self) -> None:
        choice("format", self.format, _FORMATS)
        choice("minimum_deployment_target", self.minimum_deployment_target, _DEPLOYMENT)
        choice("compute_precision", self.compute_precision, _PRECISIONS)
        choice("compile", self.compile, (True, False))


def _converters() -> tuple[Any, Any, Any, Any]:
    """onnx, onnx2torch, torch and coremltools, or a CompilerError saying what is missing."""
    try:
        import coremltools
        import onnx
        import onnx2torch
        import torch
    except ImportError as exc:
        raise CompilerError(f"the Core ML route needs onnx2torch, torch and coremltools on the build host"
                            f" (`modelpack hosts bootstrap` installs them on macOS): {exc}") from None
    return onnx, onnx2torch, torch, coremltools


def xcrun_compile(package: Path, out_dir: Path) -> tuple[Path | None, str]:
    """Compile an .mlpackage with Xcode's coremlcompiler; (compiled path or None, note)."""
    xcrun = shutil.which("xcrun")
    if xcrun is None:
        return None, "not compiled: xcrun not found (install Xcode); the app must compile the .mlpackage at first launch"
    proc = subprocess.run([xcrun, "coremlcompiler", "compile", str(package), str(out_dir)],
                          capture_output=True, text=True)
    compiled = out_dir / (package.stem + ".mlmodelc")
    if proc.returncode != 0 or not compiled.is_dir():
        cause = root_cause(proc.stderr or proc.stdout)
        return None, f"not compiled: xcrun coremlcompiler failed (code {proc.returncode}): {cause}"
    return compiled, "compiled with xcrun coremlcompiler"


class CoreMlCompiler(BaseCompiler):
    # traced by torch at one size
    fixed_shapes = True
    name = "coreml"
    engine = "coreml"
    distribution = "coremltools"
    targets = frozenset({"ios-arm64"})
    options_type = CoreMlOptions
    requires = ("coremltools", "onnx2torch", "torch")

    def compile(self, model: Path, package_root: Path, target: JobTarget, options: CoreMlOptions,
                context: CompileContext) -> CompileResult:
        onnx, onnx2torch, torch, ct = _converters()
        try:
            module = onnx2torch.convert(onnx.load(str(model))).eval()
        except Exception as exc:  # onnx2torch raises NotImplementedError and others per operator
            raise CompilerError(f"onnx2torch could not convert the model: {exc}") from None
        examples = tuple(torch.zeros(i["shape"], dtype=getattr(torch, _DTYPES.get(i["dtype"], "float32")))
                         for i in context.inputs)
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, examples if len(examples) > 1 else examples[0])
            convert_options: dict[str, Any] = {
                "inputs": [ct.TensorType(name=i["name"], shape=i["shape"]) for i in context.inputs],
                "outputs": [ct.TensorType(name=o["name"]) for o in context.outputs],
                "convert_to": options.format,
                "minimum_deployment_target": getattr(ct.target, options.minimum_deployment_target),
            }
            if options.format == "mlprogram":
                convert_options["compute_precision"] = getattr(ct.precision, options.compute_precision.upper())
            mlmodel = ct.convert(traced, **convert_options)
        except Exception as exc:  # torch.jit and coremltools raise many unrelated types
            raise CompilerError(f"coremltools could not convert the traced model: {exc}") from None
        out_dir = package_root / "model"
        out_dir.mkdir(parents=True, exist_ok=True)
        package = out_dir / "model.mlpackage"
        mlmodel.save(str(package))
        description = mlmodel.get_spec().description
        runtime = {
            # coremltools may rename features it cannot use as identifiers; map by position
            "inputs": {i["name"]: f.name for i, f in zip(context.inputs, description.input)},
            "outputs": {o["name"]: f.name for o, f in zip(context.outputs, description.output)},
        }
        artifacts = [Artifact("model/model.mlpackage", "mlpackage", self.engine, "primary", runtime=runtime)]
        notes = [f"Core ML {options.format} via onnx2torch + torch.jit.trace + coremltools,"
                 f" minimum {options.minimum_deployment_target}, {options.compute_precision}"]
        if options.compile:
            compiled, note = xcrun_compile(package, out_dir)
            notes.append(note)
            if compiled is not None:
                artifacts.append(Artifact("model/model.mlmodelc", "mlmodelc", self.engine, "alternate",
                                          runtime=runtime))
        else:
            notes.append("not compiled: compile: false in the spec")
        # coremltools writes a fresh identifier into every package: not byte-reproducible
        return CompileResult(artifacts, reproducible=False, notes=notes)

