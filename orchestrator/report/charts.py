"""Charts for reports: matplotlib rendered to inline SVG (no network, no JavaScript)."""

from __future__ import annotations

import io
import math
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written by CI machines
import matplotlib.pyplot as plt  # noqa: E402

_COLOURS = {"selected": "#1a7f37", "passed": "#0969da", "rejected": "#cf222e", "over-budget": "#9a6700"}


def _number(value: Any) -> float | None:
    """A finite number from a candidate row, else None (rows come from files)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def candidates_chart(candidates: list[dict[str, Any]], title: str) -> str | None:
    """Latency (median, with the p10-p90 spread as an error bar) against the worst
    output error, one point per measured candidate, the winner starred. Returns an
    ``<svg>`` element, or None when nothing was measured."""
    measured = [c for c in candidates if isinstance(c, dict) and _number(c.get("median_ms")) is not None]
    if not measured:
        return None
    emulated = any(c.get("emulated") for c in measured)
    fig, ax = plt.subplots(figsize=(6.0, 3.4), dpi=96)
    for c in measured:
        error = max(_number(c.get("max_abs_error")) or 0.0, 1e-12)
        status, name = str(c.get("status", "?")), str(c.get("id", "?"))
        colour = _COLOURS.get(status, "#57606a")
        marker = "*" if status == "selected" else "o"
        ax.errorbar([c["median_ms"]], [error], xerr=[[0.0], [max(_number(c.get("spread_ms")) or 0.0, 0.0)]],
                    fmt=marker, color=colour, markersize=14 if marker == "*" else 7, capsize=3,
                    gid=f"candidate-{name}")
        # parse_math off: an engine's message or an id with '$' is text, not a formula to typeset
        ax.annotate(f"{name} ({status})", (c["median_ms"], error), textcoords="offset points",
                    xytext=(6, 6), fontsize=8, parse_math=False)
    ax.set_yscale("log")
    ax.set_xlabel("median latency, ms (bar: p10-p90 spread)")
    ax.set_ylabel("max abs error vs reference")
    ax.set_title(title + ("  [EMULATED: not native speed]" if emulated else ""), fontsize=9,
                 color="#9a6700" if emulated else "black", parse_math=False)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    # drop the RDF metadata block: it names remote vocabularies the page does not need
    return re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.DOTALL)
