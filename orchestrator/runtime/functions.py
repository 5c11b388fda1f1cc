"""Business functions in NumPy: the reference for the fused graphs, and the fallback.

The packager fuses a spec's pre/post-processing into the ONNX graph (see
``packager/functions.py``) so that every engine runs it and the device needs no extra
code. This module defines what each function *means*, in plain NumPy, on the resolved
step descriptions the manifest records:

* the packager checks every fused graph against it before packaging;
* the tests check the graphs against it on edge cases (1x1 images, no detections);
* the runtime applies it itself for an engine whose converter rejected a fused op, and
  for what no engine can hold (string labels), so such a package still takes the same
  inputs and gives the same outputs.

All arithmetic is float32, in the order the steps are listed; the image enters as
uint8 HWC and is carried as float32 NCHW (transposes do not change values).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

Step = Mapping[str, Any]


# -- pre-processing (one image tensor in, the model's input out) ---------------------
def _image(x: np.ndarray, step: Step) -> np.ndarray:
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != step["channels_count"]:
        raise ValueError(f"input {step['name']!r} must be uint8 [H, W, {step['channels_count']}],"
                         f" got {x.dtype} {list(x.shape)}")
    return x.astype(np.float32).transpose(2, 0, 1)[None]


def _axis_coordinates(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling with ONNX Resize's ``half_pixel`` convention: source index,
    its right neighbour, and the weight of that neighbour, for every output pixel."""
    scale = np.float32(size_out) / np.float32(size_in)
    out = np.arange(size_out, dtype=np.float32)
    coord = (out + np.float32(0.5)) / scale - np.float32(0.5)
    coord = np.clip(coord, 0, size_in - 1).astype(np.float32)
    low = np.floor(coord).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (coord - low).astype(np.float32)


def _resize(x: np.ndarray, step: Step) -> np.ndarray:
    height, width = step["size"]
    y0, y1, wy = _axis_coordinates(x.shape[2], height)
    x0, x1, wx = _axis_coordinates(x.shape[3], width)
    rows = x[:, :, y0, :] * (1 - wy)[None, None, :, None] + x[:, :, y1, :] * wy[None, None, :, None]
    return (rows[:, :, :, x0] * (1 - wx) + rows[:, :, :, x1] * wx).astype(np.float32)


def _centre_crop(x: np.ndarray, step: Step) -> np.ndarray:
    height, width = step["size"]
    top, left = (x.shape[2] - height) // 2, (x.shape[3] - width) // 2
    if top < 0 or left < 0:
        raise ValueError(f"center_crop {height}x{width} is larger than the image {x.shape[2]}x{x.shape[3]}")
    return x[:, :, top:top + height, left:left + width]


def _swap_channels(x: np.ndarray, step: Step) -> np.ndarray:
    return x[:, ::-1, :, :]


def _normalize(x: np.ndarray, step: Step) -> np.ndarray:
    shape = (1, -1, 1, 1)
    x = x * np.float32(step["scale"])
    x = x - np.asarray(step["mean"], np.float32).reshape(shape)
    return (x / np.asarray(step["std"], np.float32).reshape(shape)).astype(np.float32)


def _layout(x: np.ndarray, step: Step) -> np.ndarray:
    return x if step["layout"] == "NCHW" else x.transpose(0, 2, 3, 1)


def _cast(x: np.ndarray, step: Step) -> np.ndarray:
    return x.astype(step["dtype"])


PRE: dict[str, Callable[[np.ndarray, Step], np.ndarray]] = {
    "image": _image, "resize": _resize, "center_crop": _centre_crop, "swap_channels": _swap_channels,
    "normalize": _normalize, "layout": _layout, "cast": _cast,
}


# -- post-processing (model outputs in, named results out) --------------------------
def _softmax(outputs: dict[str, np.ndarray], step: Step) -> None:
    x = outputs[step["output"]].astype(np.float32)
    e = np.exp(x - x.max(axis=step["axis"], keepdims=True))
    outputs[step["output"]] = (e / e.sum(axis=step["axis"], keepdims=True)).astype(np.float32)


def _sigmoid(outputs: dict[str, np.ndarray], step: Step) -> None:
    x = outputs[step["output"]].astype(np.float32)
    outputs[step["output"]] = (1 / (1 + np.exp(-x))).astype(np.float32)


def _argmax(outputs: dict[str, np.ndarray], step: Step) -> None:
    x = outputs.pop(step["output"])
    outputs[step["result"]] = np.argmax(x, axis=step["axis"]).astype(np.int64)


def _topk(outputs: dict[str, np.ndarray], step: Step) -> None:
    x = outputs.pop(step["output"]).astype(np.float32).reshape(-1)
    k = min(step["k"], x.size)
    # largest first; equal scores keep the lower index first, as ONNX TopK does
    order = np.lexsort((np.arange(x.size), -x))[:k]
    scores, indices = x[order], order.astype(np.int64)
    if step.get("threshold") is not None:
        keep = scores >= np.float32(step["threshold"])
        scores, indices = scores[keep], indices[keep]
    outputs[step["scores"]], outputs[step["indices"]] = scores, indices


def _labels(outputs: dict[str, np.ndarray], step: Step) -> None:
    names = step["labels"]
    indices = outputs[step["indices"]]
    outputs[step["result"]] = np.array([names[i] if 0 <= i < len(names) else "" for i in indices.reshape(-1)],
                                       dtype=np.str_).reshape(indices.shape)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def decode_detections(raw: np.ndarray, step: Step) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] as x1, y1, x2, y2 and class scores [N, C] from a detector's raw output."""
    rows = raw[0].T if step["layout"] == "channels_first" else raw[0]
    rows = rows.astype(np.float32)
    boxes = rows[:, :4]
    if step["objectness"]:
        scores = rows[:, 5:] * rows[:, 4:5]
    else:
        scores = rows[:, 4:]
    if step["box"] == "cxcywh":
        half = boxes[:, 2:4] * np.float32(0.5)
        boxes = np.concatenate([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)
    return boxes.astype(np.float32), scores.astype(np.float32)


def _detections(outputs: dict[str, np.ndarray], step: Step) -> None:
    """Per-class greedy non-maximum suppression, then the best ``max_detections`` overall."""
    boxes, scores = decode_detections(outputs.pop(step["output"]), step)
    found: list[tuple[float, int, int]] = []  # (score, class, box index)
    for cls in range(scores.shape[1]):
        column = scores[:, cls]
        candidates = [i for i in np.lexsort((np.arange(column.size), -column)) if column[i] > step["score"]]
        kept: list[int] = []
        for i in candidates:
            if len(kept) >= step["max_detections"]:
                break
            if not kept or np.all(_iou(boxes[i], boxes[kept]) <= step["iou"]):
                kept.append(int(i))
        found += [(float(column[i]), cls, i) for i in kept]
    found.sort(key=lambda f: -f[0])
    found = found[:step["max_detections"]]
    outputs[step["boxes"]] = boxes[[f[2] for f in found]].reshape(-1, 4).astype(np.float32)
    outputs[step["scores"]] = np.array([f[0] for f in found], np.float32)
    outputs[step["classes"]] = np.array([f[1] for f in found], np.int64)


POST: dict[str, Callable[[dict[str, np.ndarray], Step], None]] = {
    "softmax": _softmax, "sigmoid": _sigmoid, "argmax": _argmax, "topk": _topk, "labels": _labels,
    "detections": _detections,
}


def apply_pre(feeds: Mapping[str, np.ndarray], steps: list[Step]) -> dict[str, np.ndarray]:
    """Turn the package's inputs into the model's: the image steps replace one input."""
    if not steps:
        return dict(feeds)
    image = steps[0]
    result = {k: v for k, v in feeds.items() if k != image["name"]}
    x = np.asarray(feeds[image["name"]])
    for step in steps:
        x = PRE[step["op"]](x, step)
    result[image["model_input"]] = x
    return result


def apply_post(outputs: Mapping[str, np.ndarray], steps: list[Step]) -> dict[str, np.ndarray]:
    result = dict(outputs)
    for step in steps:
        POST[step["op"]](result, step)
    return result


#: a package graph output carrying the model's own output before the fused post steps
TAP_PREFIX = "modelpack_fn/raw_"


def tap_name(output: str) -> str:
    """The name of the tap for the model's ``output``: accuracy gates read taps; the
    package's signature does not list them and ``Session.run`` does not return them."""
    return TAP_PREFIX + output


class FunctionsRunner:
    """An engine runner with the functions it does not hold applied around it in NumPy.
    The model's own output the post steps read is kept as a tap, as a fused graph has it."""

    def __init__(self, inner: Any, pre: list[Step], post: list[Step]) -> None:
        self._inner, self._pre, self._post = inner, pre, post

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = self._inner.run(apply_pre(feeds, self._pre))
        taps = {tap_name(step["output"]): raw[step["output"]] for step in self._post[:1]
                if step.get("output") in raw}
        return {**apply_post(raw, self._post), **taps}
