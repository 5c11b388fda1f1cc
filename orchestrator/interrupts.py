"""Cancellation by signal: SIGINT, SIGTERM and SIGHUP all stop a run the same way.

CI systems cancel a job with SIGTERM (GitLab, Jenkins, Buildkite) or SIGINT then SIGTERM
(GitHub Actions); a closed terminal sends SIGHUP. Each raises :class:`Cancelled` in the
main thread, so the one cleanup path that Ctrl-C always took runs for all of them: stop
dispatching, stop every packager, remove staging, write nothing partial, and exit with
128 + the signal's number (130, 143, 129). A second signal while that cleanup runs exits
at once, with one line saying what may be left and how to remove it.

A SIGINT that is *ignored* when modelpack starts (a background job of a
non-interactive shell, ``nohup``) stays ignored, as POSIX expects of a program started
that way; SIGTERM and SIGHUP still cancel it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
                if s is not None)


class Cancelled(KeyboardInterrupt):
    """The run was cancelled by a signal; ``exit_code`` is 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """The exit code for an interruption: a plain KeyboardInterrupt is SIGINT's."""
    return interrupt.exit_code if isinstance(interrupt, Cancelled) else 128 + signal.SIGINT


@contextmanager
def cancellable(leftovers: str) -> Iterator[None]:
    """Within this block, SIGINT (unless ignored at start), SIGTERM and SIGHUP raise
    :class:`Cancelled`; a second one exits at once after printing ``leftovers`` (what
    may be left behind and how to remove it). Only the main thread can take signals;
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    cancelled: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if cancelled:
            print(f"modelpack: {signal.Signals(signum).name} again while cleaning up; exiting now. {leftovers}",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)
        cancelled.append(signum)
        raise Cancelled(signum)

    previous = {}
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if signum == signal.SIGINT and current == signal.SIG_IGN:
            continue  # started with SIGINT ignored: keep ignoring it
        previous[signum] = current
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
