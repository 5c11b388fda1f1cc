"""Function library: the spec's pre/post-processing, fused into the ONNX graph.

A camera app has an HWC uint8 image, not a normalised NCHW float tensor, and wants
labels or boxes, not logits. Fusing those steps into the graph as plain ONNX ops means
every engine runs them and the device needs no extra code. What each step *means* is
defined once, in NumPy, in ``runtime/functions.py``; this module turns the spec's short
form into resolved steps (every default made explicit from the model) and builds the
graph for them. The resolved steps go into the manifest, so the runtime can apply any
step an engine could not hold, and nobody has to guess what the package does.

Only string label lookup always stays in the runtime: no engine but onnxruntime has
string tensors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..runtime.functions import TAP_PREFIX, tap_name
from .signature import ModelError, all_nodes, tensor_inputs

Step = dict[str, Any]

PRE_OPS = ("image", "resize", "center_crop", "bgr_to_rgb", "rgb_to_bgr", "normalize", "hwc_to_nchw", "cast")
POST_OPS = ("softmax", "sigmoid", "argmax", "topk", "detections")
DETECTION_FORMATS = {
    # raw output layout, box encoding, objectness column
    "yolov8": ("channels_first", "cxcywh", False),
    "yolov5": ("channels_last", "cxcywh", True),
    "xyxy": ("channels_last", "xyxy", False),
}
MIN_OPSET = 13
FUNCTION_PREFIX = _PREFIX = "modelpack_fn/"


class FunctionError(ValueError):
    """A function step does not fit the model; the message names the step."""


@dataclass
class Resolved:
    """Steps with every default filled in from the model; JSON-ready for the manifest."""

    pre: list[Step] = field(default_factory=list)
    post: list[Step] = field(default_factory=list)
    #: steps only the runtime applies (string labels)
    runtime: list[Step] = field(default_factory=list)
    fallback: str = "runtime"

    def dynamic_outputs(self) -> dict[str, list[int | str]]:
        """Outputs whose length depends on the data (detections, thresholded top-k)."""
        shapes: dict[str, list[int | str]] = {}
        for step in self.post:
            if step["op"] == "detections":
                shapes.update({step["boxes"]: ["detections", 4], step["scores"]: ["detections"],
                               step["classes"]: ["detections"]})
            elif step["op"] == "topk" and step["shape"] == ["k"]:
                shapes.update({step["scores"]: ["k"], step["indices"]: ["k"]})
        if any(s["op"] == "labels" for s in self.runtime) and "indices" in shapes:
            shapes.update({s["result"]: shapes[s["indices"]] for s in self.runtime if s["op"] == "labels"})
        return shapes

    def to_json(self) -> dict[str, Any]:
        return {"pre": self.pre, "post": self.post, "runtime": self.runtime, "fallback": self.fallback}


def _entry(raw: Any, where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(raw, str):
        return raw, {}
    if isinstance(raw, dict) and len(raw) == 1:
        (name, options), = raw.items()
        if options is None or isinstance(options, dict):
            return name, dict(options or {})
        if name == "cast":
            return name, {"dtype": options}
    raise FunctionError(f"{where}: write a step as a name or as {{name: {{options}}}}, not {raw!r}")


def _take(options: dict[str, Any], where: str, **defaults: Any) -> dict[str, Any]:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise FunctionError(f"{where}: unknown option(s) {unknown}; valid: {sorted(defaults)}")
    return {**defaults, **options}


def _size(value: Any, where: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return [value, value]
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return list(value)
    raise FunctionError(f"{where}: size must be a positive integer or [height, width], not {value!r}")


def _channel_values(value: Any, channels: int, where: str) -> list[float]:
    values = value if isinstance(value, list) else [value] * channels
    if len(values) != channels or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise FunctionError(f"{where}: needs one number or a list of {channels} numbers, not {value!r}")
    return [float(v) for v in values]


def _model_input(model: Any, name: str | None) -> Any:
    inputs = tensor_inputs(model)
    if name is None:
        if len(inputs) != 1:
            raise FunctionError(f"the model has inputs {[i.name for i in inputs]}: say which one the pre steps feed"
                                " with functions.input")
        return inputs[0]
    for value in inputs:
        if value.name == name:
            return value
    raise FunctionError(f"functions.input {name!r} is not a model input ({[i.name for i in inputs]})")


def _dims(value: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _resolve_pre(model: Any, spec: Mapping[str, Any]) -> list[Step]:
    import onnx

    raw = list(spec.get("pre") or [])
    if not raw:
        return []
    target = _model_input(model, spec.get("input"))
    dims = _dims(target)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(target.type.tensor_type.elem_type)).name
    if len(dims) != 4 or dims[0] not in (1, None):
        raise FunctionError(f"image pre-processing needs a model input of shape [1, C, H, W] or [1, H, W, C];"
                            f" {target.name!r} has {dims}")
    layout = "NHWC" if dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4) else "NCHW"
    channels = dims[1] if layout == "NCHW" else dims[3]
    model_hw = dims[2:4] if layout == "NCHW" else dims[1:3]
    if channels is None:
        raise FunctionError(f"model input {target.name!r} has a dynamic channel dimension")

    name, options = _entry(raw[0], "functions.pre[0]")
    if name != "image":
        raise FunctionError("functions.pre[0]: the first pre step must be `image` (the uint8 HWC input it creates)")
    options = _take(options, "functions.pre[0].image", name="image", size=None, channels="RGB")
    size = _size(options["size"], "functions.pre[0].image") if options["size"] is not None else None
    if size is None and None not in model_hw and not any(_entry(e, "")[0] == "resize" for e in raw[1:]):
        size = [int(v) for v in model_hw]  # no resize: the image must come at the model's size
    if options["channels"] not in ("RGB", "BGR", "GRAY"):
        raise FunctionError("functions.pre[0].image: channels must be RGB, BGR or GRAY")
    steps: list[Step] = [{"op": "image", "name": options["name"], "model_input": target.name,
                          "channels_count": int(channels), "channels": options["channels"], "size": size}]
    current = size
    explicit_layout = None
    explicit_dtype = None
    resized = False
    for index, entry in enumerate(raw[1:], 1):
        where = f"functions.pre[{index}]"
        name, options = _entry(entry, where)
        where = f"{where}.{name}"
        if name == "resize":
            options = _take(options, where, size=None)
            if options["size"] is None:
                if None in model_hw:
                    raise FunctionError(f"{where}: the model's input size is dynamic; give size: [height, width]")
                target_hw = [int(v) for v in model_hw]
            elif isinstance(options["size"], int) and not isinstance(options["size"], bool):
                if current is None:
                    raise FunctionError(f"{where}: resizing the shorter side needs a fixed image size (image.size)")
                short = _size(options["size"], where)[0]
                scale = short / min(current)
                target_hw = [max(1, round(current[0] * scale)), max(1, round(current[1] * scale))]
            else:
                target_hw = _size(options["size"], where)
            steps.append({"op": "resize", "size": target_hw})
            current, resized = target_hw, True
        elif name == "center_crop":
            options = _take(options, where, size=None)
            crop = _size(options["size"], where) if options["size"] is not None else None
            if crop is None:
                if None in model_hw:
                    raise FunctionError(f"{where}: the model's input size is dynamic; give size: [height, width]")
                crop = [int(v) for v in model_hw]
            if current is None:
                raise FunctionError(f"{where}: cropping needs a fixed image size (image.size or a resize first)")
            if crop[0] > current[0] or crop[1] > current[1]:
                raise FunctionError(f"{where}: crop {crop} is larger than the image {current} at this step")
            steps.append({"op": "center_crop", "size": crop,
                          "offset": [(current[0] - crop[0]) // 2, (current[1] - crop[1]) // 2]})
            current = crop
        elif name in ("bgr_to_rgb", "rgb_to_bgr"):
            _take(options, where)
            if channels != 3:
                raise FunctionError(f"{where}: swapping colour channels needs 3 channels, the model has {channels}")
            steps.append({"op": "swap_channels"})
        elif name == "normalize":
            options = _take(options, where, scale=1.0, mean=0.0, std=1.0)
            std = _channel_values(options["std"], int(channels), where + ".std")
            if any(s == 0 for s in std):
                raise FunctionError(f"{where}.std: must not be zero")
            steps.append({"op": "normalize", "scale": float(options["scale"]),
                          "mean": _channel_values(options["mean"], int(channels), where + ".mean"), "std": std})
        elif name == "hwc_to_nchw":
            _take(options, where)
            explicit_layout = "NCHW"
        elif name == "cast":
            options = _take(options, where, dtype=None)
            explicit_dtype = str(options["dtype"])
        elif name == "image":
            raise FunctionError(f"{where}: `image` must come first, and only once")
        else:
            raise FunctionError(f"{where}: unknown pre step {name!r}; known: {', '.join(PRE_OPS)}")
    if explicit_layout and explicit_layout != layout:
        raise FunctionError(f"functions.pre: hwc_to_nchw given, but model input {target.name!r} is {layout} {dims}")
    if explicit_dtype and explicit_dtype != dtype:
        raise FunctionError(f"functions.pre: cast to {explicit_dtype}, but model input {target.name!r} is {dtype}")
    if current is not None and None not in model_hw and current != [int(v) for v in model_hw]:
        raise FunctionError(f"functions.pre: the image is {current} after the steps, model input"
                            f" {target.name!r} needs {[int(v) for v in model_hw]}"
                            + ("" if resized else "; add a resize step"))
    steps.append({"op": "layout", "layout": layout})
    steps.append({"op": "cast", "dtype": dtype})
    return steps


def _resolve_post(model: Any, spec: Mapping[str, Any], labels: Mapping[str, list[str]]) -> tuple[list[Step], list[Step]]:
    raw = list(spec.get("post") or [])
    if not raw:
        return [], []
    outputs = [o.name for o in model.graph.output]
    current = spec.get("output") or outputs[0]
    if current not in outputs:
        raise FunctionError(f"functions.output {current!r} is not a model output ({outputs})")
    dims = next(_dims(o) for o in model.graph.output if o.name == current)
    steps: list[Step] = []
    runtime: list[Step] = []
    final = False
    for index, entry in enumerate(raw):
        where = f"functions.post[{index}]"
        name, options = _entry(entry, where)
        where = f"{where}.{name}"
        if final:
            raise FunctionError(f"{where}: nothing can follow {steps[-1]['op']}, which replaces the output")
        if name in ("softmax", "sigmoid"):
            options = _take(options, where, axis=-1) if name == "softmax" else _take(options, where)
            steps.append({"op": name, "output": current, **options})
        elif name == "argmax":
            options = _take(options, where, axis=-1, name="class")
            steps.append({"op": "argmax", "output": current, "axis": options["axis"], "result": options["name"]})
            final = True
        elif name == "topk":
            options = _take(options, where, k=5, labels=None, threshold=None)
            if not isinstance(options["k"], int) or options["k"] < 1:
                raise FunctionError(f"{where}.k: must be a positive integer")
            rows = dims[1:] if dims and dims[0] in (1, None) else dims  # a leading batch axis runs at 1
            if len([d for d in rows if d != 1]) > 1:
                raise FunctionError(f"{where}: top-k needs one row of scores per run; output {current!r} is {dims}")
            count = int(np.prod(rows)) if None not in rows else None
            size: int | str = "k" if options["threshold"] is not None or count is None else min(options["k"], count)
            steps.append({"op": "topk", "output": current, "k": options["k"], "threshold": options["threshold"],
                          "scores": "scores", "indices": "indices", "shape": [size]})
            if options["labels"] is not None:
                names = labels.get(str(options["labels"]))
                if names is None:
                    raise FunctionError(f"{where}.labels: {options['labels']} was not provided")
                if count is not None and len(names) != count:
                    raise FunctionError(f"{where}.labels: {options['labels']} has {len(names)} lines; output"
                                        f" {current!r} has {count} classes")
                runtime.append({"op": "labels", "indices": "indices", "labels": names, "result": "labels",
                                "file": str(options["labels"])})
            final = True
        elif name == "detections":
            options = _take(options, where, format="yolov8", iou=0.45, score=0.25, max_detections=100)
            if options["format"] not in DETECTION_FORMATS:
                raise FunctionError(f"{where}.format: must be one of {sorted(DETECTION_FORMATS)}")
            if not (0 <= options["iou"] <= 1) or not isinstance(options["max_detections"], int) \
                    or options["max_detections"] < 1:
                raise FunctionError(f"{where}: iou must be in [0, 1] and max_detections a positive integer")
            layout, box, objectness = DETECTION_FORMATS[options["format"]]
            if len(dims) != 3:
                raise FunctionError(f"{where}: a detector output must be [1, rows, columns]; {current!r} is {dims}")
            steps.append({"op": "detections", "output": current, "layout": layout, "box": box,
                          "objectness": objectness, "iou": float(options["iou"]), "score": float(options["score"]),
                          "max_detections": options["max_detections"],
                          "boxes": "boxes", "scores": "scores", "classes": "classes"})
            final = True
        else:
            raise FunctionError(f"{where}: unknown post step {name!r}; known: {', '.join(POST_OPS)}")
    return steps, runtime


def resolve(model: Any, spec: Mapping[str, Any], labels: Mapping[str, list[str]]) -> Resolved:
    """Check the spec's ``functions`` against the model and make every default explicit."""
    pre = _resolve_pre(model, spec)
    post, runtime = _resolve_post(model, spec, labels)
    fallback = spec.get("fallback", "runtime")
    if fallback not in ("runtime", "drop"):
        raise FunctionError("functions.fallback: must be runtime (apply in NumPy) or drop (drop the candidate)")
    return Resolved(pre, post, runtime, fallback)


# -- graph building ----------------------------------------------------------------
class _Graph:
    """Collects the nodes and constants of one fused section."""

    def __init__(self, opset: int, section: str) -> None:
        self.opset = opset
        self.section = section
        self.nodes: list[Any] = []
        self.constants: list[Any] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{_PREFIX}{self.section}/{hint}_{self._count}"

    def const(self, value: Any, dtype: Any) -> str:
        from onnx import numpy_helper

        name = self.name("const")
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, kind: str, inputs: list[str], out: str | list[str] | None = None, outputs: int = 1,
           **attrs: Any) -> Any:
        """Add a node; ``out`` names its output(s), otherwise fresh names are made."""
        from onnx import helper

        if isinstance(out, list):
            names = out
        else:
            names = [out] if out else [self.name(kind.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(kind, inputs, names, name=self.name(kind), **attrs))
        return names[0] if outputs == 1 else names

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.op("Unsqueeze", [x, self.const(axes, np.int64)])

    def squeeze(self, x: str, axes: list[int]) -> str:
        return self.op("Squeeze", [x, self.const(axes, np.int64)])

    def slice(self, x: str, starts: list[int], ends: list[int], axes: list[int]) -> str:
        return self.op("Slice", [x, self.const(starts, np.int64), self.const(ends, np.int64), self.const(axes, np.int64)])


def _build_pre(g: _Graph, steps: list[Step], result: str) -> None:
    import onnx

    image = steps[0]
    x = g.op("Cast", [image["name"]], to=onnx.TensorProto.FLOAT)
    x = g.op("Transpose", [g.unsqueeze(x, [0])], perm=[0, 3, 1, 2])
    for step in steps[1:]:
        op = step["op"]
        if op == "resize":
            # constant sizes (batch 1, known channels) keep the graph simple for every converter
            sizes = g.const([1, image["channels_count"], *step["size"]], np.int64)
            x = g.op("Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
        elif op == "center_crop":
            # the size before the crop is fixed by then (resolve() checked it)
            (h, w), (top, left) = step["size"], step["offset"]
            x = g.slice(x, [top, left], [top + h, left + w], [2, 3])
        elif op == "swap_channels":
            x = g.op("Gather", [x, g.const([2, 1, 0], np.int64)], axis=1)
        elif op == "normalize":
            x = g.op("Mul", [x, g.const(step["scale"], np.float32)])
            x = g.op("Sub", [x, g.const(np.reshape(step["mean"], (1, -1, 1, 1)), np.float32)])
            x = g.op("Div", [x, g.const(np.reshape(step["std"], (1, -1, 1, 1)), np.float32)])
        elif op == "layout":
            if step["layout"] == "NHWC":
                x = g.op("Transpose", [x], perm=[0, 2, 3, 1])
        elif op == "cast":
            g.op("Cast", [x], out=result,
                 to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(step["dtype"])))


def _build_post(g: _Graph, steps: list[Step], source: str, final_name: str) -> dict[str, tuple[int, list[Any]]]:
    """Nodes from the renamed model output ``source``; returns the new graph outputs."""
    import onnx

    f, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    x = source
    for index, step in enumerate(steps):
        last = index == len(steps) - 1
        op = step["op"]
        if op == "softmax":
            x = g.op("Softmax", [x], out=final_name if last else None, axis=step["axis"])
        elif op == "sigmoid":
            x = g.op("Sigmoid", [x], out=final_name if last else None)
        elif op == "argmax":
            g.op("ArgMax", [x], out=step["result"], axis=step["axis"], keepdims=0)
            return {step["result"]: (i64, [])}
        elif op == "topk":
            flat = g.op("Reshape", [x, g.const([-1], np.int64)])
            k = g.op("Min", [g.op("Shape", [flat]), g.const([step["k"]], np.int64)])
            if step["threshold"] is None:
                g.op("TopK", [flat, k], out=[step["scores"], step["indices"]], axis=-1, largest=1, sorted=1)
            else:
                values, indices = g.op("TopK", [flat, k], outputs=2, axis=-1, largest=1, sorted=1)
                keep = g.op("GreaterOrEqual", [values, g.const(step["threshold"], np.float32)])
                g.op("Compress", [values, keep], out=step["scores"], axis=0)
                g.op("Compress", [indices, keep], out=step["indices"], axis=0)
            return {step["scores"]: (f, step["shape"]), step["indices"]: (i64, step["shape"])}
        elif op == "detections":
            return _build_detections(g, step, x)
    return {}


def _build_detections(g: _Graph, step: Step, raw: str) -> dict[str, tuple[int, list[Any]]]:
    import onnx

    rows = g.op("Transpose", [raw], perm=[0, 2, 1]) if step["layout"] == "channels_first" else raw
    big = np.iinfo(np.int64).max
    boxes = g.slice(rows, [0], [4], [2])
    if step["objectness"]:
        scores = g.op("Mul", [g.slice(rows, [5], [big], [2]), g.slice(rows, [4], [5], [2])])
    else:
        scores = g.slice(rows, [4], [big], [2])
    if step["box"] == "cxcywh":  # [x1 y1 x2 y2] = [cx cy w h] @ M, exact in float32
        m = [[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]]
        boxes = g.op("MatMul", [boxes, g.const(m, np.float32)])
    per_class = g.op("Transpose", [scores], perm=[0, 2, 1])
    selected = g.op("NonMaxSuppression", [boxes, per_class, g.const([step["max_detections"]], np.int64),
                                          g.const([step["iou"]], np.float32), g.const([step["score"]], np.float32)])
    classes = g.op("Gather", [selected, g.const(1, np.int64)], axis=1)
    which = g.op("Gather", [selected, g.const(2, np.int64)], axis=1)
    chosen_scores = g.op("GatherND", [per_class, selected])
    chosen_boxes = g.op("Gather", [g.squeeze(boxes, [0]), which], axis=0)
    k = g.op("Min", [g.op("Shape", [chosen_scores]), g.const([step["max_detections"]], np.int64)])
    order = g.name("order")
    g.op("TopK", [chosen_scores, k], out=[step["scores"], order], axis=-1, largest=1, sorted=1)
    g.op("Gather", [chosen_boxes, order], out=step["boxes"], axis=0)
    g.op("Gather", [classes, order], out=step["classes"], axis=0)
    f, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    return {step["boxes"]: (f, ["detections", 4]), step["scores"]: (f, ["detections"]),
            step["classes"]: (i64, ["detections"])}


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename a tensor wherever nodes use or produce it, subgraphs (If/Loop bodies) included."""
    for node in all_nodes(graph):
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]


def upgrade_opset(model: Any, minimum: int = MIN_OPSET) -> tuple[Any, str | None]:
    """The model at an ONNX opset of at least ``minimum``, and a note if it was raised."""
    import onnx
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= minimum:
        return model, None
    try:
        upgraded = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # the converter raises bare RuntimeErrors
        raise ModelError(f"cannot raise the model's opset from {current} to {minimum}: {exc}") from None
    return upgraded, f"opset raised from {current} to {minimum}"


def fuse(model: Any, resolved: Resolved) -> tuple[Any, list[str]]:
    """A copy of ``model`` with the pre and post steps as graph nodes, and notes on what
    preparation that needed."""
    import onnx
    from onnx import helper

    notes: list[str] = []
    fused, note = upgrade_opset(copy.deepcopy(model))
    if note:
        notes.append(note)
    graph = fused.graph
    opset = next(o.version for o in fused.opset_import if o.domain in ("", "ai.onnx"))
    pre, post = _Graph(opset, "pre"), _Graph(opset, "post")
    if resolved.pre:
        image = resolved.pre[0]
        # the model's input becomes an inner tensor (the image input may take its name)
        inner = _PREFIX + "input_" + image["model_input"]
        _rename(graph, image["model_input"], inner)
        _build_pre(pre, resolved.pre, inner)
        kept = [i for i in graph.input if i.name != image["model_input"]]
        size = image["size"] or ["height", "width"]
        new_input = helper.make_tensor_value_info(image["name"], onnx.TensorProto.UINT8,
                                                  [*size, image["channels_count"]])
        del graph.input[:]
        graph.input.extend([new_input, *kept])
    new_outputs: dict[str, tuple[int, list[Any]]] = {}
    if resolved.post:
        source = resolved.post[0]["output"]
        raw = tap_name(source)
        tap = copy.deepcopy(next(o for o in graph.output if o.name == source))
        tap.name = raw
        _rename(graph, source, raw)
        new_outputs = _build_post(post, resolved.post, raw, source)
        position = [o.name for o in graph.output].index(source)
        kept_outputs = list(graph.output)
        if new_outputs:  # (softmax/sigmoid only: the output keeps its name and shape)
            del kept_outputs[position]
            for offset, (name, (elem, dims)) in enumerate(new_outputs.items()):
                kept_outputs.insert(position + offset, helper.make_tensor_value_info(name, elem, dims))
        # the model's own output stays visible, last, as a tap: accuracy gates read it
        # (not the post-processed one); the runtime returns only the package's outputs
        del graph.output[:]
        graph.output.extend([*kept_outputs, tap])
    nodes = [*pre.nodes, *graph.node, *post.nodes]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend([*pre.constants, *post.constants])
    taken = {o.name for o in graph.output} | {i.name for i in graph.input}
    if len(taken) != len(graph.output) + len(graph.input):
        raise FunctionError("the functions' new input/output names clash with the model's own; rename them")
    try:
        onnx.checker.check_model(fused)
    except Exception as exc:  # a bug here, not the user's: say what failed
        raise FunctionError(f"the fused graph is not valid ONNX: {exc}") from None
    return fused, notes


def is_tap(name: str) -> bool:
    return name.startswith(TAP_PREFIX)


def package_inputs(model_inputs: list[dict[str, Any]], resolved: Resolved) -> list[dict[str, Any]]:
    """The package's input signature: the image input in place of the one it feeds."""
    if not resolved.pre:
        return list(model_inputs)
    image = resolved.pre[0]
    spec = {"name": image["name"], "dtype": "uint8",
            "shape": [*(image["size"] or ["height", "width"]), image["channels_count"]]}
    return [spec if i["name"] == image["model_input"] else i for i in model_inputs]
