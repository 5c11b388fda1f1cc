"""Judging a variant against the fp32 model on held-out samples: the task gates, the
loss as users measure it, and whether the sample is large enough to tell.

Gates read the *model's own* outputs, before any fused post-processing: after a fused
top-k the first output is the sorted scores, whose arg-max is 0 for every model, so a
gate over it passes anything. The packaged outputs are judged like with like (the
top-1 of a top-k is ``indices[0]``; detections are matched by IoU and class). Every
verdict names the tensor it read and the samples it used, and a proportion that is
too close to the gate's limit for the number of samples (its 95 % Wilson interval
contains the limit) is a rejection, not a pass: a variant never ships on a coin toss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

#: a task gate needs at least this many held-out samples (the spec is refused otherwise)
MIN_EVALUATION_SAMPLES = 20
#: z for a two-sided 95 % interval
_Z = 1.959964


@dataclass(frozen=True)
class GateTensors:
    """Which tensors the gates read. ``model`` maps each of the model's own outputs (as
    the model names it) to the tensor that carries it in the package graph (a tap before
    the fused post-processing, or the output itself); ``indices`` is a fused top-k's
    indices output; ``boxes``/``scores``/``classes`` a fused detections step's; ``dense``
    the taps of the tensors that decide outputs the golden samples left empty, which
    every candidate is gated on (``data_dependent``)."""

    model: dict[str, str] = field(default_factory=dict)
    indices: str | None = None
    boxes: str | None = None
    scores: str | None = None
    classes: str | None = None
    dense: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "GateTensors":
        return cls(**data)


def wilson(successes: int, total: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + _Z ** 2 / total
    centre = (p + _Z ** 2 / (2 * total)) / denominator
    half = _Z * math.sqrt(p * (1 - p) / total + _Z ** 2 / (4 * total ** 2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def class_axis(shape: tuple[int, ...]) -> int | None:
    """The class axis of a classifier's output (the one non-unit axis after the batch
    axis), or None when the output has no single class axis (boxes, sequences)."""
    axes = [axis for axis, size in enumerate(shape) if axis > 0 and size > 1]
    return axes[0] if len(axes) == 1 else None


def _top(values: np.ndarray, axis: int, k: int) -> np.ndarray:
    moved = np.moveaxis(values, axis, -1).reshape(-1, values.shape[axis])
    return np.argsort(-moved, axis=-1, kind="stable")[:, :k]


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with many."""
    if len(boxes) == 0:
        return np.zeros(0)
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def matched_boxes(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], tensors: GateTensors,
                  threshold: float) -> tuple[int, int]:
    """(fp32 boxes found by the variant, fp32 boxes): greedy matching, highest fp32
    score first, each variant box used once, same class and IoU >= ``threshold``."""
    ref_boxes = np.asarray(want[tensors.boxes]).reshape(-1, 4)
    ref_classes = np.asarray(want[tensors.classes]).reshape(-1)
    order = np.argsort(-np.asarray(want[tensors.scores]).reshape(-1), kind="stable")
    boxes = np.asarray(got[tensors.boxes]).reshape(-1, 4)
    classes = np.asarray(got[tensors.classes]).reshape(-1)
    free = np.ones(len(boxes), bool)
    found = 0
    for index in order:
        candidates = free & (classes == ref_classes[index])
        overlaps = np.where(candidates, iou(ref_boxes[index], boxes), 0.0)
        if len(overlaps) and overlaps.max() >= threshold:
            free[int(overlaps.argmax())] = False
            found += 1
    return found, len(ref_boxes)


def loss_report(outputs: list[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]],
                tensors: GateTensors, iou_threshold: float = 0.5) -> dict[str, Any]:
    """The loss as users read it, over the held-out samples: per model output, max and
    mean absolute error and the max error relative to the output's range; for a
    classifier output, top-1 agreement and top-5 overlap; for fused detections, box
    recall at IoU ``iou_threshold``; for a fused top-k, the packaged top-1."""
    report: dict[str, Any] = {"samples": len(outputs), "outputs": {}}
    for name, tensor in tensors.model.items():
        got = [np.asarray(o[tensor], np.float64) for o in outputs]
        want = [np.asarray(r[tensor], np.float64) for r in reference]
        if any(g.shape != w.shape for g, w in zip(got, want)):
            report["outputs"][name] = {"tensor": tensor, "problem": "shapes differ from the fp32 model's"}
            continue
        diff = np.concatenate([np.abs(g - w).ravel() for g, w in zip(got, want)])
        span = float(max(w.max() for w in want) - min(w.min() for w in want)) if want else 0.0
        entry: dict[str, Any] = {"tensor": tensor, "max_abs": round(float(diff.max(initial=0.0)), 6),
                                 "mean_abs": round(float(diff.mean()) if diff.size else 0.0, 6),
                                 "max_rel_to_range": round(float(diff.max(initial=0.0)) / span, 6) if span else None}
        axis = class_axis(want[0].shape) if want else None
        if axis is not None:
            classes = want[0].shape[axis]
            same = [int(np.array_equal(_top(g, axis, 1), _top(w, axis, 1))) for g, w in zip(got, want)]
            entry["top1_agreement"] = round(sum(same) / len(same), 6)
            if classes > 5:
                overlap = [len(set(_top(g, axis, 5).ravel()) & set(_top(w, axis, 5).ravel())) / 5
                           for g, w in zip(got, want)]
                entry["top5_overlap"] = round(float(np.mean(overlap)), 6)
        elif want and want[0].ndim == 3 and want[0].shape[-1] > 1:  # [batch, steps, classes]
            steps = [(np.argmax(g, -1) == np.argmax(w, -1)) for g, w in zip(got, want)]
            entry["sequence_agreement"] = round(float(np.mean(np.concatenate([s.ravel() for s in steps]))), 6)
        report["outputs"][name] = entry
    if tensors.boxes:
        found = [matched_boxes(o, r, tensors, iou_threshold) for o, r in zip(outputs, reference)]
        total = sum(t for _, t in found)
        report["box_recall"] = {"iou": iou_threshold, "found": sum(f for f, _ in found), "boxes": total,
                                "value": round(sum(f for f, _ in found) / total, 6) if total else None}
    if tensors.indices:
        same = [int(np.asarray(o[tensors.indices]).ravel()[:1].tolist() == np.asarray(r[tensors.indices]).ravel()[:1].tolist())
                for o, r in zip(outputs, reference)]
        report["packaged_top1"] = {"tensor": f"{tensors.indices}[0]", "agreement": round(sum(same) / len(same), 6)}
    return report


def proportion_verdict(criterion: str, tensor: str, successes: int, total: int, limit: float,
                       unit: str) -> dict[str, Any]:
    """Pass only when the 95 % interval lies at or above the limit; fail when it lies
    below; otherwise too few samples to tell, which is a rejection too."""
    value = successes / total if total else 0.0
    low, high = wilson(successes, total)
    verdict: dict[str, Any] = {"criterion": f"{criterion} >= {limit:g}", "tensor": tensor,
                               "value": round(value, 6), "interval_95": [round(low, 4), round(high, 4)],
                               "counted": f"{successes} of {total} {unit}", "passed": low >= limit}
    if not verdict["passed"] and high >= limit:
        verdict["undecided"] = (f"{total} {unit} cannot tell {value:.3g} from the limit {limit:g}"
                                f" (95 % interval {low:.3f}..{high:.3f}); give more evaluation samples")
    return verdict


def task_verdict(gate: Mapping[str, Any], outputs: list[dict[str, np.ndarray]],
                 reference: list[dict[str, np.ndarray]], tensors: GateTensors) -> dict[str, Any]:
    """The gate's criterion over the held-out samples (top1_agreement, box_recall or
    sequence_agreement; the metric gate is the user's and is evaluated by the worker)."""
    if "top1_agreement" in gate:
        name = gate.get("output") or next(iter(tensors.model))
        tensor = tensors.model[name]
        axis = class_axis(np.shape(reference[0][tensor]))
        if axis is None:
            raise ValueError(f"top1_agreement: output {name!r} has no single class axis")
        same = sum(int(np.array_equal(_top(np.asarray(o[tensor]), axis, 1), _top(np.asarray(r[tensor]), axis, 1)))
                   for o, r in zip(outputs, reference))
        return proportion_verdict("top1_agreement", tensor, same, len(outputs), gate["top1_agreement"], "samples")
    if "box_recall" in gate:
        found = [matched_boxes(o, r, tensors, gate.get("iou", 0.5)) for o, r in zip(outputs, reference)]
        return proportion_verdict(f"box_recall@{gate.get('iou', 0.5):g}", f"{tensors.boxes}, {tensors.classes}",
                                  sum(f for f, _ in found), sum(t for _, t in found), gate["box_recall"],
                                  "fp32 boxes")
    if "sequence_agreement" in gate:
        name = gate.get("output") or next(iter(tensors.model))
        tensor = tensors.model[name]
        steps = np.concatenate([(np.argmax(o[tensor], -1) == np.argmax(r[tensor], -1)).ravel()
                                for o, r in zip(outputs, reference)])
        return proportion_verdict("sequence_agreement", tensor, int(steps.sum()), int(steps.size),
                                  gate["sequence_agreement"], "steps")
    raise ValueError(f"no proportion criterion in the gate {dict(gate)}")


def split(count: int, seed: int) -> tuple[list[int], list[int]]:
    """Calibration samples split deterministically (seeded) into a calibration part and
    a held-out part that judges the variants: half held out (rounded down)."""
    order = np.random.default_rng(seed).permutation(count)
    held = count // 2
    return sorted(int(i) for i in order[held:]), sorted(int(i) for i in order[:held])


def held_out_count(evaluation: int | None, calibration: int | None) -> int:
    """How many held-out samples a spec's data gives the gates."""
    if evaluation is not None:
        return evaluation
    return (calibration or 0) // 2


def sample_digest(sample: Mapping[str, np.ndarray]) -> str:
    """A short content digest of one sample (all its inputs), to show that the
    calibration and held-out parts share none."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(sample):
        array = np.ascontiguousarray(sample[name])
        digest.update(name.encode() + str(array.dtype).encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()[:16]


def save_sample_list(samples: list[Mapping[str, np.ndarray]], path: Any) -> str:
    """Samples whose arrays may differ in shape from one to the next (a detector's
    boxes) as one .npz: ``<index:06d>_<tensor name>`` per array."""
    np.savez(path, **{f"{index:06d}_{name}": np.asarray(value) for index, sample in enumerate(samples)
                      for name, value in sample.items()})
    return str(path)


def load_sample_list(path: Any) -> list[dict[str, np.ndarray]]:
    samples: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            samples.setdefault(int(key[:6]), {})[key[7:]] = data[key]
    return [samples[i] for i in sorted(samples)]
