"""Running converter subprocesses so that their output does not depend on chance.

Some converters (onnxruntime's ORT-format writer among them) order their output by
hash tables keyed on heap addresses, so address-space layout randomisation makes each
run write different bytes. Running them with ASLR disabled for that one child process
(``personality(ADDR_NO_RANDOMIZE)``, what ``setarch -R`` does), a fixed
``PYTHONHASHSEED`` and fixed paths makes packages byte-reproducible. Where the kernel or
a sandbox refuses the call, the conversion still runs and the caller records that the
artifact is not reproducible.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from dataclasses import dataclass

ADDR_NO_RANDOMIZE = 0x0040000


def _disable_aslr() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.personality(ADDR_NO_RANDOMIZE) == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"personality(ADDR_NO_RANDOMIZE) refused: {os.strerror(errno)}")


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str
    reproducible: bool


def run(argv: list[str], cwd: str | None = None) -> Completed:
    """Run a converter with ASLR off and a fixed hash seed when the host allows it."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if sys.platform.startswith("linux"):
        try:
            proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                  preexec_fn=_disable_aslr)
            return Completed(proc.returncode, proc.stdout, proc.stderr, reproducible=True)
        except subprocess.SubprocessError:
            pass  # the sandbox refused personality(): run it the ordinary way
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    return Completed(proc.returncode, proc.stdout, proc.stderr, reproducible=False)
