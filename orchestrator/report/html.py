"""``report.html``: one self-contained page a release engineer reads in the morning.

A models × targets grid coloured by status, then per job its host, attempts, stage
timings, selected engine, packager log and a chart of the candidates; with a previous
summary, regressions are highlighted. Jinja2 autoescaping keeps packager logs and
model names inert.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from .charts import candidates_chart
from .compare import deltas, regressions

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
)


def cell_status(job: dict[str, Any]) -> str:
    if job["status"] == "built":
        return "cached" if job.get("cached") else "built"
    if job["status"] == "failed":
        return f"failed-{job.get('failure') or 'package'}"
    return "skipped"


def anchor(job_id: str) -> str:
    return "job-" + "".join(ch if ch.isalnum() else "-" for ch in job_id)


def render_report(summary: dict[str, Any], previous: dict[str, Any] | None = None) -> str:
    jobs = summary.get("jobs", [])
    models = list(dict.fromkeys(j["name"] for j in jobs))
    targets = list(dict.fromkeys(j["target"] for j in jobs))
    grid = {(j["name"], j["target"]): j for j in jobs}
    found = regressions(summary, previous) if previous else []
    flagged = {r.job for r in found}
    charts = {j["job"]: candidates_chart(j.get("candidates", []), f"{j['job']}: candidates") for j in jobs}
    return _ENV.get_template("report.html.j2").render(
        summary=summary, jobs=jobs, models=models, targets=targets, grid=grid, charts=charts,
        regressions=found, flagged=flagged, deltas=deltas(summary, previous) if previous else {},
        compared=previous is not None, cell_status=cell_status, anchor=anchor,
    )


#: the candidate columns the card shows
_CARD_COLUMNS = ("id", "engine", "compiler_version", "status", "size_bytes", "reason")


def _card_candidate(row: Any) -> dict[str, Any]:
    """A manifest's candidate row with every column the card shows: the schema leaves
    rows free-form (each engine adds its own keys), and a package is not trusted."""
    row = row if isinstance(row, dict) else {}
    latency = row.get("latency_ms") if isinstance(row.get("latency_ms"), dict) else {}
    return {**{key: row.get(key) for key in _CARD_COLUMNS},
            "latency_ms": {"median": latency.get("median", "-"), "p90": latency.get("p90", "-")} if latency else None}


def render_card(manifest: dict[str, Any]) -> str:
    """The package card: what a deployer needs to know about one package."""
    shown = {**manifest, "candidates": [_card_candidate(c) for c in manifest.get("candidates") or []]}
    return _ENV.get_template("card.html.j2").render(m=shown)
