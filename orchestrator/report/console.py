"""The console: a live table with a progress bar per job on a terminal, plain lines
everywhere else.

Nightly pipelines capture output into log files, where cursor movement and colour
codes are noise, so without a TTY every stage change is one plain, greppable line and
no rich markup is emitted. ``verbosity`` -1 prints nothing while jobs run, 1 also
streams every line the packagers print.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from ..scheduler import JobRecord

_STYLE = {"built": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "pending": "dim"}
#: the order stages happen in, for the progress bar (packager stages are "package: ...")
_ORDER = ["pending", "connect", "push", "package", "package: platform", "package: reference",
          "package: normalise", "package: compile", "package: select", "package: package",
          "package: selftest", "package: archive", "pull", "verify"]
_DONE = ("built", "failed", "cancelled")


def progress_fraction(stage: str) -> float:
    if stage.split(" ")[0] in _DONE:
        return 1.0
    key = next((k for k in reversed(_ORDER) if stage.startswith(k)), "pending")
    return _ORDER.index(key) / len(_ORDER)


class ConsoleEvents:
    """Receives scheduler events and shows them; use as a context manager."""

    def __init__(self, records: list[JobRecord], stream: TextIO, verbosity: int = 0,
                 interactive: bool | None = None) -> None:
        self._records = records
        self._console = Console(file=stream, highlight=False)
        self._interactive = self._console.is_terminal if interactive is None else interactive
        self._verbosity = verbosity
        self._stream = stream
        self._where: dict[str, tuple[str | None, str]] = {r.job.id: (None, "pending") for r in records}
        self._lock = threading.Lock()
        self._live: Live | None = None

    def __enter__(self) -> "ConsoleEvents":
        if self._interactive and self._verbosity >= 0:
            self._live = Live(self._table(), console=self._console, refresh_per_second=4,
                              get_renderable=self._table)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def _print(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(escape(line), markup=False)
        else:
            print(line, file=self._stream, flush=True)

    def job_update(self, record: JobRecord, host: str | None, stage: str) -> None:
        with self._lock:
            self._where[record.job.id] = (host, stage)
            if not self._interactive and self._verbosity >= 0:
                elapsed = time.time() - record.started if record.started else 0.0
                line = f"[{record.job.id}] host={host or '-'} stage={stage} elapsed={elapsed:.1f}s"
                if record.reason and stage in ("failed", "cancelled"):
                    line += f" reason={record.reason}"
                self._print(line)

    def job_log(self, record: JobRecord, host: str | None, line: str) -> None:
        if self._verbosity >= 1:
            with self._lock:
                self._print(f"[{record.job.id}@{host}] {line}")

    def _table(self) -> Table:
        table = Table(title="modelpack build", expand=False)
        for column in ("job", "target", "host", "progress", "stage", "elapsed", "attempts"):
            table.add_column(column)
        now = time.time()
        for record in self._records:
            host, stage = self._where[record.job.id]
            end = record.finished or now
            elapsed = f"{end - record.started:.1f}s" if record.started else ""
            style = _STYLE.get(record.status, "")
            bar = ProgressBar(total=1.0, completed=progress_fraction(stage), width=20)
            table.add_row(escape(record.job.spec.spec.name), record.job.target.name, escape(host or "-"), bar,
                          f"[{style}]{escape(stage)}[/]" if style else escape(stage), elapsed,
                          str(len(record.attempts)))
        return table
