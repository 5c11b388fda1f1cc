"""Engine adapters: one small class per inference engine behind the same two calls.

Each adapter opens one artifact with the runtime options recorded in the manifest and
runs feeds keyed by the *model's* tensor names, translating to the engine's own names
and layouts where it has them (ncnn renames blobs and drops the batch axis). Engines
are imported lazily so that a package whose engine is missing fails with a message
naming the engine, not an ImportError from deep inside.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np


class EngineUnavailable(RuntimeError):
    """The engine a package needs is not installed (or not importable) here."""


class Runner(Protocol):
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _import(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise EngineUnavailable(f"{module} is not installed: {exc}") from exc


class OnnxRuntimeRunner:
    """``.onnx``/``.ort`` on onnxruntime. ``optimization`` is "disabled" for the
    reference run (the source model exactly as written) and "all" for shipped artifacts,
    which is what a device would use. ``execution_providers`` (e.g. CoreML first for
    iOS packages) are used where this onnxruntime has them, with the CPU provider always
    last."""

    def __init__(self, path: Path, options: Mapping[str, Any]) -> None:
        ort = _import("onnxruntime")
        levels = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        modes = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = levels[options.get("optimization", "all")]
        session_options.intra_op_num_threads = int(options.get("threads", 0))
        session_options.execution_mode = modes[options.get("execution_mode", "sequential")]
        session_options.log_severity_level = 3
        providers = usable_providers(options.get("execution_providers"))
        self._session = ort.InferenceSession(str(path), session_options, providers=providers)
        self._output_names = [o.name for o in self._session.get_outputs()]
        #: onnxruntime returns a string tensor as an array of Python objects, which no .npy
        #: file holds without pickle; the package gives text as NumPy strings everywhere
        self._strings = [o.name for o in self._session.get_outputs() if o.type == "tensor(string)"]
        self._run = self._session.run
        native = getattr(self._session, "_sess", None)
        if providers == ["CPUExecutionProvider"] and callable(getattr(native, "run", None)):
            # The wrapper's run re-checks the feed names (reading every input's type
            # string), looks for OrtValues and WebGPU graph capture, and retries on a
            # failed accelerator: 2-4 us a call, 3-5 % of a 0.08 ms model, for checks
            # Session has already made against the signature, on a CPU-only session
            # that has nothing to fall back from. Anything else keeps the wrapper.
            self._run = native.run

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = feeds if type(feeds) is dict else dict(feeds)  # the native call takes a dict only
        outputs = dict(zip(self._output_names, self._run(self._output_names, feeds, None)))
        for name in self._strings:
            outputs[name] = outputs[name].astype(np.str_)
        return outputs


class OpenVinoRunner:
    """OpenVINO IR on the CPU plugin. The precision hint is explicit because OpenVINO
    silently computes in bf16 on CPUs that have it unless told otherwise.

    Each input has a buffer of its own that OpenVINO reads in place (set once, and again
    only when the input's shape changes); a call copies the feeds into them, and runs the
    request's native call, which copies the outputs out. OpenVINO's convenience call,
    ``request.infer(feeds)``, wraps every array in a new tensor and its results in a dict
    keyed by port: on Silero VAD that was 0.5 ms around a 0.05 ms inference, and it
    ranked OpenVINO 2-3x behind onnxruntime on models where the engine itself is faster."""

    def __init__(self, path: Path, options: Mapping[str, Any]) -> None:
        self._ov = ov = _import("openvino")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": options.get("precision", "f32")}
        if options.get("threads"):
            config["INFERENCE_NUM_THREADS"] = int(options["threads"])
        if options.get("performance_hint"):
            config["PERFORMANCE_HINT"] = str(options["performance_hint"])
        if options.get("streams"):
            config["NUM_STREAMS"] = str(int(options["streams"]))
        self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        self._request = self._compiled.create_infer_request()
        inputs = self._compiled.inputs
        #: per input port: its tensor names, its NumPy type, and the buffer OpenVINO reads
        self._input_names = [port.get_names() for port in inputs]
        self._input_types = [port.get_element_type().to_dtype() for port in inputs]
        self._text = {i for i, port in enumerate(inputs) if port.get_element_type() == ov.Type.string}
        self._buffers: list[np.ndarray | None] = [None] * len(inputs)
        self._keys = [min(names) for names in self._input_names]  # the feed for each port
        # an output port can carry several tensor names; answer to every one of them
        self._output_names = [sorted(port.get_names()) for port in self._compiled.outputs]
        # the bound C++ call under the Python wrapper: it skips the wrapper's feed
        # dispatch and its OVDict (4-7 us a call); an OpenVINO without one keeps the
        # wrapper. Both return a mapping of output copies (the next call overwrites
        # OpenVINO's own memory) in the compiled model's output order.
        native = next((k.__dict__["infer"] for k in type(self._request).__mro__
                       if k.__module__ == "openvino._pyopenvino" and "infer" in k.__dict__), None)
        request = self._request
        self._infer: Callable[[], Mapping[Any, np.ndarray]] = (
            (lambda: native(request, {}, False, True)) if native is not None else request.infer)

    def _feed_keys(self, feeds: Mapping[str, np.ndarray]) -> list[str]:
        """The feed that goes to each input port: the one named by any of its names."""
        keys = []
        for names in self._input_names:
            key = next((name for name in sorted(names) if name in feeds), None)
            if key is None:
                raise KeyError(f"no feed for the OpenVINO input named {sorted(names)}")
            keys.append(key)
        return keys

    def _bind(self, index: int, array: np.ndarray) -> np.ndarray | None:
        """A buffer of ``array``'s shape for input ``index``, given to OpenVINO to read in
        place; None for text, which OpenVINO copies in on every call."""
        if index in self._text:
            self._request.set_input_tensor(index, self._ov.Tensor(array))
            return None
        buffer = self._buffers[index] = np.empty(array.shape, self._input_types[index])
        self._request.set_input_tensor(index, self._ov.Tensor(buffer, shared_memory=True))
        return buffer

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            arrays = [feeds[key] for key in self._keys]
        except KeyError:
            self._keys = self._feed_keys(feeds)
            arrays = [feeds[key] for key in self._keys]
        buffers = self._buffers
        for index, array in enumerate(arrays):
            if type(array) is not np.ndarray:
                array = np.asarray(array)
            buffer = buffers[index]
            if buffer is None or buffer.shape != array.shape:
                buffer = self._bind(index, array)
                if buffer is None:
                    continue
            np.copyto(buffer, array, casting="same_kind")
        result = {}
        for names, value in zip(self._output_names, self._infer().values()):
            result[names[0]] = value
            for name in names[1:]:
                result[name] = value.copy()
        return result


class MnnRunner:
    """MNN through its Express module API."""

    def __init__(self, path: Path, options: Mapping[str, Any]) -> None:
        self._mnn = _import("MNN")
        self._inputs = list(options["inputs"])
        self._outputs = list(options["outputs"])
        #: outputs whose length the data decides, as the model declares them (that length named)
        self._decided = dict(options.get("data_dependent_shapes") or {})
        #: MNN's own defaults are one thread and normal precision; kept here because MNN
        #: cannot report them back
        self.threads = int(options.get("threads") or 1)
        self.precision = str(options.get("precision", "normal"))
        modes = {"normal": self._mnn.expr.PrecisionMode.Normal, "high": self._mnn.expr.PrecisionMode.High,
                 "low": self._mnn.expr.PrecisionMode.Low}
        self._module = self._mnn.nn.load_module_from_file(str(path), self._inputs, self._outputs,
                                                          thread_num=self.threads,
                                                          precision_mode=modes[self.precision])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expr = self._mnn.expr
        types = {np.dtype(np.float32): expr.float, np.dtype(np.int32): expr.int,
                 np.dtype(np.int64): expr.int, np.dtype(np.uint8): expr.uint8}
        values = []
        for name in self._inputs:
            array = np.array(feeds[name], order="C")
            if array.dtype in (np.int64, np.bool_):  # MNN computes indices and masks in int32
                array = array.astype(np.int32)
            elif array.dtype in (np.float16, np.float64):  # and has no half or double type at its
                array = array.astype(np.float32)  # interface: its model takes float
            values.append(expr.const(array, list(array.shape), expr.NCHW, types[array.dtype]))
        outputs = self._module.forward(values)
        result = {}
        for name, value in zip(self._outputs, outputs):
            if 0 in value.shape:  # MNN cannot read an empty tensor (NMS that found nothing)
                kinds = {expr.float: np.float32, expr.double: np.float64, expr.int: np.int32,
                         expr.int64: np.int64, expr.uint8: np.uint8}
                declared = self._decided.get(name)  # MNN gives [0, 2100, 4] for boxes [0, 4]
                shape = [0 if isinstance(d, str) else int(d) for d in declared] if declared else value.shape
                result[name] = np.zeros(shape, kinds.get(value.dtype, np.float32))
                continue
            if value.data_format == expr.NC4HW4:
                value = expr.convert(value, expr.NCHW)
            result[name] = np.array(value.read(), copy=True)
        return result


class NcnnRunner:
    """ncnn from a pnnx conversion: blobs are named in0.., out0.. in graph order, and
    ncnn Mats carry no batch axis, so a leading 1 is dropped on the way in (a larger
    batch runs sample by sample) and the output's axes are restored on the way out."""

    def __init__(self, path: Path, options: Mapping[str, Any]) -> None:
        self._ncnn = _import("ncnn")
        self._net = self._ncnn.Net()
        exact = not options.get("fp16", False)
        self._net.opt.use_fp16_packed = not exact
        self._net.opt.use_fp16_storage = not exact
        self._net.opt.use_fp16_arithmetic = not exact
        self._net.opt.use_bf16_storage = not exact
        self._net.opt.num_threads = int(options.get("threads", 0)) or self._net.opt.num_threads
        if options.get("light_mode") is not None:
            self._net.opt.lightmode = bool(options["light_mode"])
        if options.get("packing") is not None:
            self._net.opt.use_packing_layout = bool(options["packing"])
        if self._net.load_param(str(path)) != 0 or self._net.load_model(str(path.with_suffix(".bin"))) != 0:
            raise RuntimeError(f"ncnn could not load {path.name}")
        self._inputs: dict[str, str] = dict(options["inputs"])  # model name -> blob
        self._outputs: dict[str, str] = dict(options["outputs"])
        self._shapes: dict[str, list[int]] = dict(options["output_shapes"])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {name: np.ascontiguousarray(feeds[name], dtype=np.float32) for name in self._inputs}
        leading = {a.shape[0] for a in arrays.values() if a.ndim > 1}
        if len(leading) == 1 and (batch := leading.pop()) > 1:
            # ncnn computes one sample at a time: a batch runs sample by sample
            parts = [self._run_one({k: a[i:i + 1] for k, a in arrays.items()}) for i in range(batch)]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        return self._run_one(arrays)

    def _run_one(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ncnn = self._ncnn
        with self._net.create_extractor() as extractor:
            for name, blob in self._inputs.items():
                array = arrays[name]
                if array.ndim > 1 and array.shape[0] == 1:
                    array = array[0]
                extractor.input(blob, ncnn.Mat(array).clone())
            result = {}
            for name, blob in self._outputs.items():
                code, mat = extractor.extract(blob)
                if code != 0:
                    raise RuntimeError(f"ncnn failed to compute {name!r} (blob {blob}, code {code})")
                result[name] = self._restore(np.array(mat, copy=True), self._shapes[name])
        return result

    @staticmethod
    def _restore(array: np.ndarray, recorded: list[int | str]) -> np.ndarray:
        """The output with the axes ncnn dropped: the recorded shape when the sizes are
        the ones recorded at build time, else leading unit axes up to the output's rank
        (ncnn computes one sample, so a dropped leading axis has size 1)."""
        fixed = [d for d in recorded if isinstance(d, int)]
        if len(fixed) == len(recorded) and int(np.prod(fixed)) == array.size:
            return array.reshape(fixed)
        return array.reshape((1,) * max(len(recorded) - array.ndim, 0) + array.shape)


def usable_providers(requested: list[Any] | None) -> list[Any]:
    """The requested onnxruntime execution providers (names, or [name, options] pairs)
    that this onnxruntime has, then the CPU provider."""
    available = set(_import("onnxruntime").get_available_providers())
    chosen = []
    for entry in requested or []:
        name = entry if isinstance(entry, str) else entry[0]
        if name in available and name != "CPUExecutionProvider":
            chosen.append(entry if isinstance(entry, str) else (name, dict(entry[1])))
    return chosen + ["CPUExecutionProvider"]


class CoreMlRunner:
    """A Core ML model (``.mlpackage`` or compiled ``.mlmodelc``) through coremltools.
    Core ML itself exists only on Apple platforms, so this runs on a macOS build host."""

    def __init__(self, path: Path, options: Mapping[str, Any]) -> None:
        if sys.platform != "darwin":
            raise EngineUnavailable("Core ML models run only on macOS and iOS")
        ct = _import("coremltools")
        loader = ct.models.CompiledMLModel if path.suffix == ".mlmodelc" else ct.models.MLModel
        self._model = loader(str(path), compute_units=ct.ComputeUnit[options.get("compute_units", "ALL")])
        self._outputs = dict(options["outputs"])  # model output name -> Core ML feature name
        self._inputs = dict(options["inputs"])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._model.predict({self._inputs[name]: np.asarray(value) for name, value in feeds.items()})
        return {name: np.asarray(result[feature]) for name, feature in self._outputs.items()}


def installed_version(distribution: str) -> str | None:
    """Version of an installed Python distribution, or None if it is absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


#: engine name -> (Python distribution that provides it, runner factory)
ENGINES: dict[str, tuple[str, Callable[[Path, Mapping[str, Any]], Runner]]] = {
    "onnxruntime": ("onnxruntime", OnnxRuntimeRunner),
    "openvino": ("openvino", OpenVinoRunner),
    "mnn": ("MNN", MnnRunner),
    "ncnn": ("ncnn", NcnnRunner),
    "coreml": ("coremltools", CoreMlRunner),
}


def open_artifact(engine: str, path: Path, options: Mapping[str, Any] | None = None) -> Runner:
    """A runner for one artifact. Functions the artifact's graph does not hold (its
    ``functions`` runtime option) are applied around the engine in NumPy."""
    try:
        _, factory = ENGINES[engine]
    except KeyError:
        raise EngineUnavailable(
            f"engine {engine!r} is not supported by this runtime (known: {', '.join(ENGINES)})"
        ) from None
    options = dict(options or {})
    functions = options.pop("functions", None)
    runner = factory(Path(path), options)
    if functions:
        from .functions import FunctionsRunner

        return FunctionsRunner(runner, functions.get("pre", []), functions.get("post", []))
    return runner
