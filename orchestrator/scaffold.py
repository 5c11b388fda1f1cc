"""``modelpack init``: a first, commented ``modelpack.yaml`` for a model.

It reads the I/O signature from the model, proposes the targets the current inventory
can build and the compilers this machine has, and, for dynamic dimensions, finds sizes
the model actually runs with (trying common ones under onnxruntime), so the spec it
writes is accepted by ``modelpack build`` as it stands.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError
from .inventory import LoadedInventory, rejection
from .packager.compilers import registry
from .packager.samples import random_inputs
from .packager.signature import ModelError, is_quantized, load_onnx, signature
from .spec import Tolerance
from .targets import TARGETS

#: sizes tried for a dynamic non-batch dimension, most common first
_TRIAL_SIZES = (224, 320, 128, 64, 32, 16, 1)


def _runs(model: Path, inputs: list[dict[str, Any]], shapes: dict[str, list[int]]) -> bool:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # failed trials are expected: their error log would drown init's one line
    try:
        session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        session.run(None, random_inputs(inputs, shapes, seed=0)[0])
        return True
    except Exception:  # any failure means "not with these sizes"
        return False


def working_shapes(model: Path, inputs: list[dict[str, Any]]) -> dict[str, list[int]] | None:
    """Shapes for inputs with dynamic dimensions that the model runs with, or None."""
    dynamic = [(i["name"], axis) for i in inputs for axis, d in enumerate(i["shape"]) if not isinstance(d, int)]
    if not dynamic:
        return {}
    later = [(n, a) for n, a in dynamic if a != 0]
    for size in _TRIAL_SIZES if later else (1,):
        shapes = {i["name"]: [d if isinstance(d, int) else (1 if axis == 0 else size)
                              for axis, d in enumerate(i["shape"])] for i in inputs
                  if any(not isinstance(d, int) for d in i["shape"])}
        if _runs(model, inputs, {**{i["name"]: list(i["shape"]) for i in inputs}, **shapes}):
            return shapes
    return None


def _name_from(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", path.stem).strip("-._+") or "model"
    return name if name[0].isalnum() else f"m{name}"


def _yaml_key(name: str) -> str:
    """``name`` as a YAML flow key, quoted where YAML needs it (names with ':' or '/')."""
    return yaml.safe_dump(name).strip().removesuffix("...").strip()


def render(model: Path, spec_dir: Path, inventory: LoadedInventory) -> str:
    try:
        proto = load_onnx(model)
        inputs, outputs = signature(proto)
    except ModelError as exc:
        raise InputError(model, None, str(exc)) from None
    targets = [t for t in TARGETS.values()
               if any(rejection(h, t) is None for h in inventory.hosts)] or [TARGETS["linux-x86_64"]]
    compilers = [name for name, c in registry().items()
                 if c.version() is not None and any(t.name in c.targets for t in targets)]
    shapes = working_shapes(model, inputs)
    relative = Path(model).resolve()
    try:
        relative = relative.relative_to(spec_dir.resolve())
    except ValueError:
        pass
    lines = [
        f"# Packaging instructions for {model.name}, written by `modelpack init`.",
        "# Reference: docs/reference.md. Build with: modelpack build THIS_FILE --out dist/",
        "#",
        "# Model signature:",
        *[f"#   input  {i['name']}: {i['dtype']}{i['shape']}" for i in inputs],
        *[f"#   output {o['name']}: {o['dtype']}{o['shape']}" for o in outputs],
        f"name: {_name_from(model)}",
        'version: "0.1.0"',
        f"model: {yaml.safe_dump(str(relative), default_style=None).strip().removesuffix('...').strip()}",
        f"# targets the inventory ({inventory.source}) can build:",
        "targets:",
        *[f"  - {t.name}" for t in targets],
        "# compilers installed here; several are candidates, measured on the build host:",
        "compilers:",
        *[f"  - {c}" for c in compilers or ["onnxruntime"]],
        "# golden inputs for the self-test (.npz keyed by input name); random when absent:",
        "# samples: samples.npz",
    ]
    if shapes:
        lines += ["# sizes for dynamic dimensions (checked: the model runs with them under onnxruntime):",
                  "shapes:", *[f"  {_yaml_key(n)}: {s}" for n, s in shapes.items()]]
    elif shapes is None:
        lines += ["# The model did not run on random inputs with common sizes: give real samples above,",
                  "# or sizes for its dynamic dimensions under `shapes:`."]
    # the gate is left to its default, which follows the model (its outputs' precision, or a
    # measurement for a quantised model); written out, it would stay fixed if the model changed
    atol, rtol, _ = Tolerance().resolved(o["dtype"] for o in outputs)
    default = ("measured on the build host from onnxruntime's own integer kernels (a quantised model)"
               if is_quantized(proto) else f"{{atol: {atol:.1e}, rtol: {rtol:.1e}}} for these outputs")
    lines += ["# accuracy gate per output: |package - reference| <= atol + rtol * |reference|;",
              f"# by default {default}. Setting it fixes it:",
              f"# tolerance: {{atol: {atol:.1e}, rtol: {rtol:.1e}}}",
              *([f"# an output on another scale gets its own: tolerance: {{outputs: {{{_yaml_key(outputs[-1]['name'])}:"
                 f" {{atol: {atol * 100:.1e}}}}}}}"] if len(outputs) > 1 else []),
              "# select: {metric: latency, prefer: [onnxruntime]}"]
    return "\n".join(lines) + "\n"
