"""Which machine is this? One spelling of OS and architecture for the whole project.

This lives in the runtime, the lowest layer, because the runtime ships inside every
package and must check on the device that the package's target matches the machine;
the packager and the controller reuse it rather than keeping their own tables.
"""

from __future__ import annotations

import platform

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
