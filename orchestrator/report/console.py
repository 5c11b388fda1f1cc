"""The console: a live table on a terminal, plain lines everywhere else.

Nightly pipelines capture output into log files, where cursor movement and colour
codes are noise, so without a TTY every stage change is one plain, greppable line.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..scheduler import JobRecord

_STYLE = {"built": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "pending": "dim"}


class ConsoleEvents:
    """Receives scheduler events and shows them; use as a context manager."""

    def __init__(self, records: list[JobRecord], stream: TextIO, interactive: bool | None = None) -> None:
        self._records = records
        self._console = Console(file=stream, highlight=False)
        self._interactive = self._console.is_terminal if interactive is None else interactive
        self._stream = stream
        self._where: dict[str, tuple[str | None, str]] = {r.job.id: (None, "pending") for r in records}
        self._lock = threading.Lock()
        self._live: Live | None = None

    def __enter__(self) -> "ConsoleEvents":
        if self._interactive:
            self._live = Live(self._table(), console=self._console, refresh_per_second=4,
                              get_renderable=self._table)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def job_update(self, record: JobRecord, host: str | None, stage: str) -> None:
        with self._lock:
            self._where[record.job.id] = (host, stage)
            if not self._interactive:
                elapsed = time.time() - record.started if record.started else 0.0
                line = f"[{record.job.id}] host={host or '-'} stage={stage} elapsed={elapsed:.1f}s"
                if record.reason and stage in ("failed", "cancelled"):
                    line += f" reason={record.reason}"
                print(line, file=self._stream, flush=True)

    def _table(self) -> Table:
        table = Table(title="modelpack build", expand=False)
        for column in ("job", "target", "host", "stage", "elapsed", "attempts"):
            table.add_column(column)
        now = time.time()
        for record in self._records:
            host, stage = self._where[record.job.id]
            end = record.finished or now
            elapsed = f"{end - record.started:.1f}s" if record.started else ""
            style = _STYLE.get(record.status, "")
            table.add_row(record.job.spec.spec.name, record.job.target.name, host or "-",
                          f"[{style}]{stage}[/]" if style else stage, elapsed, str(len(record.attempts)))
        return table
