"""Reference documentation generated from the schemas, so it cannot drift.

    python -m orchestrator.docs    # rewrites docs/reference.md and the manifest tables of docs/package-format.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .inventory import Host, Inventory
from .packager.accelerate import ALWAYS_APPLIED, VARIANTS
from .spec import (Accelerate, Device, Functions, Gate, MnnSettings, NcnnSettings, OnnxRuntimeSettings,
                   OpenVinoSettings, SelectPolicy, ShapeRange, Spec, Tolerance)


def _type_name(annotation: Any) -> str:
    text = str(annotation)
    if "known_target" in text:  # the validator's repr holds a memory address
        return "list[target]"
    if isinstance(annotation, type):
        return annotation.__name__
    for noise in ("typing.", "orchestrator.spec.", "orchestrator.inventory."):
        text = text.replace(noise, "")
    return text.replace("NoneType", "None")


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{value!r}`"


def model_table(model: type[BaseModel]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        type_name = _type_name(field.annotation).replace("|", "\\|")
        lines.append(f"| `{name}` | `{type_name}` | {_default(field)} | {description} |")
    return lines


SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("Packaging instructions (`modelpack.yaml`)", Spec, "Top-level keys of a spec file."),
    ("`shapes` ranges", ShapeRange, "A range in place of a size under `shapes`, e.g."
     " `shapes: {x: [1, 3, 48, {min: 32, max: 1280, bench: 320}]}`. The manifest marks the dimension with"
     " its range; the runtime accepts any size in it and refuses others. A dynamic dimension given one size"
     " is also checked at twice that size, and then accepts any size. A range of one size (`{min: 1, max: 1}`,"
     " a streaming model's batch) fixes the dimension: the package accepts that size only, and the compilers"
     " start from a model with it written in, so that what only that size decides folds away."),
    ("`tolerance`", Tolerance, "The accuracy gate, per output element."),
    ("`select`", SelectPolicy, "How the test script chooses among candidates."),
    ("`accelerate`", Accelerate, "Acceleration variants; each is one more candidate, gated and benchmarked"
     " against its compiler's fp32 baseline. A bare list is shorthand for `variants`."),
    ("`accelerate.gate`", Gate, "How variants are judged; without a criterion, by `tolerance` like every candidate."),
    ("`functions`", Functions, "Pre/post-processing fused into the graph. The steps are described in"
     " [functions.md](functions.md)."),
    ("`device`", Device, "The device the package runs on: candidates are measured with these settings, the"
     " artifacts record them and the package runtime applies them (`load(pkg, threads=N)` and"
     " `modelpack run --threads` override the count)."),
    ("`device.engines.onnxruntime`", OnnxRuntimeSettings, "onnxruntime session options."),
    ("`device.engines.openvino`", OpenVinoSettings, "OpenVINO CPU plugin properties."),
    ("`device.engines.mnn`", MnnSettings, "MNN module options."),
    ("`device.engines.ncnn`", NcnnSettings, "ncnn net options."),
    ("Inventory (`hosts.yaml`)", Inventory, "Top-level keys of an inventory file."),
    ("`hosts[]`", Host, "One build host."),
]


def reference() -> str:
    out = ["# modelpack reference", "",
           "Generated from the schemas by `python -m orchestrator.docs`; a test checks it is current.", ""]
    for title, model, intro in SECTIONS:
        out += [f"## {title}", "", intro, "", *model_table(model), ""]
        if model is Accelerate:
            out += ["| variant | built by | what it does |", "|---|---|---|"]
            out += [f"| `{v.name}` | {v.compiler} | {v.summary} |" for v in VARIANTS.values()]
            out += [f"| `{name}` | every compiler | {text} |" for name, text in ALWAYS_APPLIED.items()]
            out.append("")
    from .report.summary import reference as summary_reference

    out += ["## Run summary (`summary.json`)", "",
            "Written at the end of every build; `--compare` and `modelpack report` read it back through this"
            " definition.", "", summary_reference()]
    return "\n".join(out)


#: docs/package-format.md is prose down to this line and generated after it
GENERATED_MARK = "<!-- generated from orchestrator/runtime/manifest.py by python -m orchestrator.docs -->"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def package_format(current: str) -> str:
    """docs/package-format.md with its manifest tables regenerated from the manifest
    definition (runtime/manifest.py)."""
    from .runtime.manifest import reference as manifest_reference

    prose = current.split(GENERATED_MARK)[0].rstrip()
    return f"{prose}\n\n{GENERATED_MARK}\n\n{manifest_reference()}"


def main() -> None:
    (DOCS / "reference.md").write_text(reference())
    path = DOCS / "package-format.md"
    path.write_text(package_format(path.read_text()))


if __name__ == "__main__":
    main()
