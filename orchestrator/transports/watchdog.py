"""A time limit on a blocking call that cannot take one itself.

Sockets, pipes and paramiko channels block without a deadline that reaches every case;
the one way out that always works is to break the thing blocked on (kill the process,
remove the container, shut the socket) from another thread. ``fired`` then tells the
caller that a broken pipe was the limit, not the host.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Callable


class Watchdog:
    """Calls ``abort`` once, ``limit`` seconds after entering, unless left first."""

    def __init__(self, limit: float, abort: Callable[[], None]) -> None:
        self._fired = threading.Event()
        self._abort = abort
        self._timer = threading.Timer(limit, self._expire)
        self._timer.daemon = True

    def _expire(self) -> None:
        self._fired.set()
        self._abort()

    @property
    def fired(self) -> bool:
        return self._fired.is_set()

    def __enter__(self) -> "Watchdog":
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._timer.cancel()
