"""Errors the user can act on. Each renders as one line naming the file, the key and
the problem; the CLI maps :class:`InputError` to exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: a spec, hosts file, model, samples or package the user supplied."""

    def __init__(self, file: str | Path | None, key: str | None, problem: str) -> None:
        super().__init__(problem)
        self.file = str(file) if file is not None else None
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        # one line, whatever a library put in the problem (parsers quote the input over
        # several lines): a wrapped message is read as two errors by scripts and humans
        text = ": ".join(part for part in (self.file, self.key, self.problem) if part)
        return " ".join(text.split())
