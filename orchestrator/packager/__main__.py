"""Entry point on the build host: ``python -m orchestrator.packager build|verify``.

Whatever happens, a ``result.json`` is written to the output folder so the controller
learns the outcome from data, not from scraping logs; the exit code says the class:
0 built, 1 package failure (not worth retrying elsewhere), 2 bad job.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from ..runtime import PackageError
from ..runtime import load as load_package
from ..runtime.archive import ArchiveError, extract
from .build import build
from .job import RESULT_FILE, STAGE_MARKER, BadJob, Job, Outcome, PackageFailed, Result


def _stage(name: str) -> None:
    print(f"{STAGE_MARKER}{name}", flush=True)


def _verify(archive: Path) -> dict[str, Any]:
    """Checksums and the self-test of every runnable artifact, in a fresh place."""
    with tempfile.TemporaryDirectory(prefix="modelpack-verify-") as tmp:
        _stage("extract")
        try:
            extract(archive, Path(tmp))
        except (ArchiveError, OSError) as exc:
            raise BadJob(f"{archive.name}: {exc}") from None
        _stage("selftest")
        runnable = [a["path"] for a in load_package(tmp).manifest["artifacts"] if a["role"] != "auxiliary"]
        results = {path: load_package(tmp, artifact=path, verify=False).self_test() for path in runnable}
        # every loaded engine is gone before the folder is removed: Windows cannot remove
        # files an engine still holds open (WinError 145 under Wine with a mapped model)
        gc.collect()
    failing = [f"{p}: {c.summary()}" for p, c in results.items() if not c.passed]
    if failing:
        raise PackageFailed("self-test failed: " + "; ".join(failing))
    return {"selftest": {p: c.to_json() for p, c in results.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.packager")
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="package the model described by a job file")
    p_build.add_argument("job", type=Path)
    p_build.add_argument("--out", type=Path, required=True)
    p_verify = sub.add_parser("verify", help="check a package's files and run its self-test")
    p_verify.add_argument("package", type=Path)
    p_verify.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # converters run in their own working folders
    args.out.mkdir(parents=True, exist_ok=True)

    try:
        if args.command == "build":
            job = Job.read(args.job)
            result = Result(Outcome.OK, **build(job, args.job.resolve().parent, args.out, _stage))
        else:
            result = Result(Outcome.OK, **_verify(args.package))
    except Exception as exc:
        result = Result(*failure(exc))
        print(f"packager: {result.error}", file=sys.stderr, flush=True)
    (args.out / RESULT_FILE).write_text(result.to_json())
    return result.status.exit_code


def failure(exc: Exception) -> tuple[Outcome, str]:
    """The one place an exception becomes an outcome. Only a job that does not fit this
    host (or arrived broken) is a bad job: the controller then tries another host. Any
    other error, a stray ValueError from NumPy or JSON included, is this model's failure:
    the same packager would fail the same way anywhere, so no healthy host is blamed."""
    if isinstance(exc, BadJob):
        return Outcome.BAD_JOB, str(exc)
    if isinstance(exc, (PackageFailed, PackageError)):
        return Outcome.FAILED, str(exc)
    traceback.print_exc()  # an unexpected bug: the trace goes to the log
    return Outcome.FAILED, f"packager crashed: {type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
