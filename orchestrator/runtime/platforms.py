"""Which machine is this? One spelling of OS and architecture for the whole project, and
what of its environment a child process is given.

This lives in the runtime, the lowest layer, because the runtime ships inside every
package and must check on the device that the package's target matches the machine;
the packager and the controller reuse it rather than keeping their own tables.
"""

from __future__ import annotations

import os
import platform
from typing import Mapping

_ARCH_ALIASES = {
    "x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64",
    "aarch64": "aarch64", "arm64": "aarch64", "arm64-v8a": "aarch64", "armv8": "aarch64",
}
_OS_ALIASES = {"linux": "linux", "darwin": "macos", "macos": "macos", "windows": "windows"}


def normalise_arch(machine: str) -> str:
    """Map uname, Docker and Go spellings of an architecture onto one name."""
    return _ARCH_ALIASES.get(machine.lower(), machine.lower())


def normalise_os(system: str) -> str:
    return _OS_ALIASES.get(system.lower(), system.lower())


def this_machine() -> tuple[str, str]:
    """(os, arch) of the running interpreter's machine, e.g. ("linux", "x86_64")."""
    return normalise_os(platform.system()), normalise_arch(platform.machine())

def compatibility_layer() -> str | None:
    """"wine 10.0" when this is a Windows program running under Wine, else None: Wine's
    ntdll exports ``wine_get_version``, Windows' own does not. What runs there are the
    real Windows binaries, but not on Windows, so results say so."""
    if os.name != "nt":
        return None
    import ctypes

    try:
        get_version = ctypes.WinDLL("ntdll").wine_get_version
    except (AttributeError, OSError):
        return None
    get_version.restype = ctypes.c_char_p
    return f"wine {get_version().decode('ascii', 'replace')}"

# -- what a child process is given -------------------------------------------------------
# Not the caller's whole environment: the local transport runs the packager on the
# controller's own machine, and a packager worker runs the spec's metric code. A release
# pipeline's environment holds registry tokens, cloud keys and signing passphrases; none
# of that is needed to compile or measure a model, so only what finding programs and
# libraries, temporary space, the locale and the engines' thread settings need is passed.

#: variables kept, by name
KEPT = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH",
    "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "OMP_NUM_THREADS",
})
#: variables kept, by prefix (the locale's categories)
KEPT_PREFIXES = ("LC_",)


def minimal_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment reduced to :data:`KEPT`, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k in KEPT or k.startswith(KEPT_PREFIXES)}
    env.update(extra or {})
    return env
