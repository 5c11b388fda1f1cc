"""Where the controller keeps files on this machine, and how it writes them.

One cache root for everything kept between runs (packages, durations, wheelhouses, the
emulated cpuinfo), and one atomic writer: a reader (a nightly job's dashboard, a second
controller, a user opening report.html mid-run) never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def cache_root() -> Path:
    """``$MODELPACK_CACHE`` as given, else ``modelpack`` under the XDG cache folder
    (``$XDG_CACHE_HOME``, default ``~/.cache``)."""
    own = os.environ.get("MODELPACK_CACHE")
    if own:
        return Path(own)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelpack"


def _umask() -> int:
    """The process umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def write_atomic(path: Path, content: str | bytes | Callable[[BinaryIO], None], scratch: Path | None = None) -> None:
    """Write via a temporary file and a rename. ``content`` is text (UTF-8), bytes, or a
    function that writes to the open binary file. ``scratch`` (on the same filesystem)
    keeps even the temporary file out of sight."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=scratch or path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a report is as readable as any file the user writes
        with os.fdopen(fd, "wb") as out:
            if callable(content):
                content(out)
            else:
                out.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
