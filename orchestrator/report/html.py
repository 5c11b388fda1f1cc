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

_TEMPLATES = jinja2.FileSystemLoader(Path(__file__).with_name("templates"))
#: the report renders summaries this controller wrote and checked: a missing key is a bug
_ENV = jinja2.Environment(loader=_TEMPLATES, autoescape=True, undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True)
#: the card renders a package's manifest, whose free-form sections come from whoever made
#: the package: what is missing there is shown empty
_CARD_ENV = jinja2.Environment(loader=_TEMPLATES, autoescape=True, undefined=jinja2.ChainableUndefined,
                               trim_blocks=True, lstrip_blocks=True)


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


def render_card(manifest: dict[str, Any], attestations: str | None = None) -> str:
    """The package card: what a deployer needs to know about one package (and, given,
    what it says about its signature and attestations)."""
    return _CARD_ENV.get_template("card.html.j2").render(m=manifest, attestations=attestations)
