"""Acceleration library: reduced-precision and optimised variants, each one a candidate.

A variant is either an ONNX-to-ONNX transform compiled by onnxruntime (fp16, dynamic or
static int8, offline optimisation) or an engine-native setting of another compiler
(OpenVINO f16/bf16 inference, MNN fp16 or quantised weights, ncnn fp16). Either way it
becomes one more candidate for the test script: compiled in a worker process, gated on
accuracy, benchmarked against the fp32 baseline of the same compiler. Nothing here
decides that a variant is better; the measurements do. (On this project's machines
dynamic int8 was 3-6x *slower* than fp32 on conv nets and fp16 broke a detector.)

Quantisation needs preparation that real exports do not come with, done automatically
and recorded: constant nodes turned into initializers (PaddleOCR keeps weights as
Constant nodes), ONNX opset raised to 13 for per-channel quantisation, and
onnxruntime's pre-processing (shape inference, constant folding).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .causes import exception_cause


class VariantError(RuntimeError):
    """The transform failed on this model: the candidate fails with this reason."""


@dataclass(frozen=True)
class Variant:
    name: str
    #: the compiler that builds (and whose engine runs) this variant
    compiler: str
    #: compiler options this variant sets
    options: Mapping[str, Any] = field(default_factory=dict)
    #: ONNX -> ONNX transform run before compiling: (source, dest, calibration) -> notes
    transform: str | None = None
    needs_calibration: bool = False
    summary: str = ""


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("ort-optimize", "onnxruntime", {"optimization": "extended"},
            summary="onnxruntime offline graph optimisation at the extended level"),
    Variant("fp16", "onnxruntime", transform="fp16",
            summary="weights and compute in fp16, fp32 inputs and outputs kept"),
    Variant("int8-dynamic", "onnxruntime", transform="int8-dynamic",
            summary="int8 weights, activations quantised at run time"),
    Variant("int8-static", "onnxruntime", transform="int8-static", needs_calibration=True,
            summary="int8 QDQ, per-channel weights, uint8 activations calibrated (MinMax) on the spec's"
                    " calibration samples"),
    Variant("int8-static-entropy", "onnxruntime", transform="int8-static-entropy", needs_calibration=True,
            summary="as int8-static, activation ranges by entropy (KL) calibration"),
    Variant("int8-static-percentile", "onnxruntime", transform="int8-static-percentile", needs_calibration=True,
            summary="as int8-static, activation ranges clipped at the 99.99th percentile"),
    Variant("int8-static-symmetric", "onnxruntime", transform="int8-static-symmetric", needs_calibration=True,
            summary="as int8-static, activation ranges made symmetric about zero"),
    Variant("openvino-f16", "openvino", {"precision": "f16"}, summary="OpenVINO f16 inference hint"),
    Variant("openvino-bf16", "openvino", {"precision": "bf16"}, summary="OpenVINO bf16 inference hint"),
    Variant("mnn-fp16", "mnn", {"fp16": True}, summary="MNN weights stored as fp16"),
    Variant("mnn-weight-int8", "mnn", {"weight_quant_bits": 8}, summary="MNN weights quantised to 8 bits"),
    Variant("ncnn-fp16", "ncnn", {"fp16": True}, summary="ncnn fp16 storage and arithmetic"),
)}

#: applied to every candidate by normalisation, so it is recorded rather than compared
ALWAYS_APPLIED = {"simplify": "onnxscript's optimizer then onnxslim run on every candidate's model during"
                              " normalisation"}


def load_calibration(path: Path | str) -> list[dict[str, np.ndarray]]:
    """Samples stored as an .npz keyed by tensor name, each array carrying the samples
    along its leading axis (the spec's calibration set, and the evaluation sets the
    packager writes): one feed dict per sample. The controller checked the layout."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    counts = {len(v) for v in arrays.values()}
    if len(counts) != 1:
        raise VariantError(f"{Path(path).name}: arrays have different sample counts {sorted(counts)}")
    count = counts.pop()
    # np.asarray: a 0-d input's sample would otherwise be a NumPy scalar, which engines refuse
    return [{k: np.asarray(v[i]) for k, v in arrays.items()} for i in range(count)]


def _constants_to_initializers(model: Any) -> int:
    """Turn top-level Constant nodes into initializers; quantisers only see initializers."""
    from onnx import numpy_helper

    moved = 0
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            array = numpy_helper.to_array(node.attribute[0].t)
            model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
            moved += 1
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return moved


def prepare_for_quantisation(source: Path, dest: Path) -> list[str]:
    """The preparation steps quantisation needs; returns what was done."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .functions import upgrade_opset

    notes = []
    model = onnx.load(str(source))
    moved = _constants_to_initializers(model)
    if moved:
        notes.append(f"{moved} Constant nodes turned into initializers")
    model, raised = upgrade_opset(model)
    if raised:
        notes.append(raised)
    staged = dest.with_suffix(".staged.onnx")
    onnx.save(model, str(staged))
    try:
        quant_pre_process(str(staged), str(dest), skip_symbolic_shape=False)
        notes.append("onnxruntime quantisation pre-processing (shape inference, constant folding)")
    except Exception as exc:  # it is an optimisation: quantise the unprocessed model instead
        staged.replace(dest)
        notes.append(f"onnxruntime quantisation pre-processing skipped: {exception_cause(exc)}")
    staged.unlink(missing_ok=True)
    return notes


def _fp16(source: Path, dest: Path, calibration: Path | None) -> list[str]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(converted, str(dest))
    return ["converted with onnxruntime.transformers.float16 (keep_io_types=True)"]


def _int8_dynamic(source: Path, dest: Path, calibration: Path | None) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared = dest.with_suffix(".prepared.onnx")
    notes = prepare_for_quantisation(source, prepared)
    quantize_dynamic(str(prepared), str(dest), weight_type=QuantType.QInt8, per_channel=True)
    prepared.unlink()
    return notes + ["quantize_dynamic: int8 weights, per channel"]


#: calibration samples run per batch, so a histogram calibrator holds at most this many
#: samples' activations at once (ORT keeps every sample's otherwise)
CALIBRATION_CHUNK = 16


@dataclass(frozen=True)
class StaticInt8:
    """One static int8 recipe: how activation ranges are calibrated, and whether they are
    made symmetric. Weights are always int8, per channel, with a 7-bit range (reduce_range:
    x86 u8s8 kernels without VNNI saturate int16 sums and silently lose up to ~15 % on a
    plain conv, seen here); activations are uint8."""

    method: str = "MinMax"
    symmetric: bool = False
    percentile: float = 99.99

    def __call__(self, source: Path, dest: Path, calibration: Path | None) -> list[str]:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static, save_tensors_data)
        from onnxruntime.quantization.calibrate import create_calibrator

        from .data_dependent import DATA_DEPENDENT
        from .signature import all_nodes

        if calibration is None:
            raise VariantError("static int8 needs calibration samples (the spec's `calibration`); it never"
                               " calibrates on random data")
        samples = load_calibration(calibration)
        chunk = min(CALIBRATION_CHUNK, len(samples))

        class Reader(CalibrationDataReader):
            def __init__(self, part: list[dict[str, np.ndarray]]) -> None:
                self._iter = iter(part)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._iter, None)

        method = CalibrationMethod[self.method]
        # ORT's defaults give the histogram methods as many bins as quantised levels (128),
        # which leaves entropy nothing to clip: 2048 bins, as TensorRT's calibrator uses
        options: dict[str, Any] = {"symmetric": self.symmetric}
        if method is not CalibrationMethod.MinMax:
            options.update(num_bins=2048, num_quantized_bins=128, percentile=self.percentile)
        prepared = dest.with_suffix(".prepared.onnx")
        notes = prepare_for_quantisation(source, prepared)
        kept = output_nodes(prepared)
        varying = sorted({node.op_type for node in all_nodes(onnx.load(str(prepared), load_external_data=False).graph)
                          if node.op_type in DATA_DEPENDENT})
        # a histogram calibrator stacks a chunk's values of each tensor into one array, and
        # tensors these ops size differ from sample to sample: one at a time
        one_at_a_time = bool(varying) and method is not CalibrationMethod.MinMax
        if one_at_a_time:
            chunk = 1
        with tempfile.TemporaryDirectory(prefix="modelpack-calibrate-") as tmp:
            # fed chunk by chunk: a calibrator holds at most one chunk's activations
            calibrator = create_calibrator(prepared, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=method, extra_options=options)
            for start in range(0, len(samples), chunk):
                calibrator.collect_data(Reader(samples[start:start + chunk]))
            save_tensors_data(calibrator.compute_data(), Path(tmp) / "ranges.json")
            del calibrator
            quantize_static(str(prepared), str(dest), None, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=kept,
                            reduce_range=True, calibrate_method=method, calibration_cache_path=Path(tmp) / "ranges.json",
                            extra_options={"ActivationSymmetric": self.symmetric})
        prepared.unlink()
        how = self.method + (f" ({self.percentile:g}th percentile)" if self.method == "Percentile" else "")
        why = f" (the data sizes the tensors of its {', '.join(varying)})" if one_at_a_time else ""
        return notes + [f"quantize_static: QDQ, per-channel 7-bit-range int8 weights, uint8 activations,"
                        f" {'symmetric' if self.symmetric else 'asymmetric'} {how} ranges, calibrated on"
                        f" {len(samples)} samples in chunks of {chunk}{why}; {len(kept)} output node(s) kept in"
                        " float"]


def output_nodes(path: Path) -> list[str]:
    """Names of the nodes that produce the network's outputs (and the fused functions).

    They stay in float: one per-tensor activation scale over an output that mixes ranges
    (a detector's box coordinates in pixels next to class scores in [0, 1]) rounds the
    small values to zero. Nodes without names are named so they can be excluded.
    """
    import onnx

    from .functions import FUNCTION_PREFIX

    model = onnx.load(str(path))
    outputs = {o.name for o in model.graph.output}  # the model's own outputs' taps included
    kept = []
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"modelpack_node_{index}"
        if outputs & set(node.output) or node.name.startswith(FUNCTION_PREFIX):
            kept.append(node.name)
    onnx.save(model, str(path))
    return kept


TRANSFORMS: dict[str, Callable[[Path, Path, Path | None], list[str]]] = {
    "fp16": _fp16, "int8-dynamic": _int8_dynamic, "int8-static": StaticInt8(),
    "int8-static-entropy": StaticInt8("Entropy"), "int8-static-percentile": StaticInt8("Percentile"),
    "int8-static-symmetric": StaticInt8(symmetric=True),
}


def transform(name: str, source: Path, dest: Path, calibration: Path | None) -> list[str]:
    """Run a variant's ONNX transform (in a worker process: quantisers can crash)."""
    try:
        return TRANSFORMS[name](source, dest, calibration)
    except VariantError:
        raise
    except Exception as exc:  # quantisers raise anything; the candidate fails with the reason
        raise VariantError(f"{name} transform failed: {type(exc).__name__}: {exception_cause(exc)}") from None
