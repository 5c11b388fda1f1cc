"""``junit.xml``: one testcase per job, so CI systems show the matrix natively."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any


def junit_xml(summary: dict[str, Any]) -> str:
    jobs = summary.get("jobs", [])
    failed = [j for j in jobs if j["status"] == "failed"]
    skipped = [j for j in jobs if j["status"] not in ("built", "failed")]
    suite = ET.Element("testsuite", name="modelpack", tests=str(len(jobs)), failures=str(len(failed)),
                       errors="0", skipped=str(len(skipped)),
                       time=f"{sum(j.get('seconds') or 0 for j in jobs):.3f}")
    for job in jobs:
        case = ET.SubElement(suite, "testcase", classname=job["name"], name=job["target"],
                             time=f"{job.get('seconds') or 0:.3f}")
        if job["status"] == "failed":
            failure = ET.SubElement(case, "failure", message=job.get("reason") or "failed",
                                    type=job.get("failure") or "package")
            failure.text = "\n".join(f"attempt on {a['host']}: {a['status']}: {a.get('reason') or ''}"
                                     for a in job.get("attempts", []))
        elif job["status"] != "built":
            ET.SubElement(case, "skipped", message=job.get("reason") or job["status"])
        else:
            ET.SubElement(case, "system-out").text = (
                f"{job.get('package')} sha256 {job.get('sha256')} engine {job.get('engine')}"
                + (" (from cache)" if job.get("cached") else ""))
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode", xml_declaration=True) + "\n"
