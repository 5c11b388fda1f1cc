"""Platform library: what is this build host, and which compile environment fits it.

A job names its target; the packager refuses to build it on a host of another OS or
architecture, because a package's self-test is only worth something on the platform
it claims.
"""

from __future__ import annotations

import platform as _platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.engines import installed_version
from ..runtime.platforms import compatibility_layer, this_machine
from .job import JobTarget

#: Python distributions whose versions are recorded as the toolchain of a build
TOOLCHAIN = ("numpy", "onnx", "onnxruntime", "protobuf", "onnxscript", "onnxslim", "openvino", "MNN", "ncnn", "pnnx")


class PlatformMismatch(RuntimeError):
    pass


#: written into the environment (the venv) by whoever installed it from a wheelhouse (the
#: Docker image build, ``hosts bootstrap``): ``sha256sum`` lines of the wheels installed,
#: so that a package's BOM can name the exact engine wheels that built it
WHEEL_HASHES = "wheels.sha256"


@dataclass
class CompileEnvironment:
    os: str
    arch: str
    python: str
    toolchain: dict[str, str] = field(default_factory=dict)
    wheels: dict[str, str] = field(default_factory=dict)
    #: the compatibility layer the OS's binaries run under here ("wine 10.0"), if any
    emulation: str | None = None

    def to_json(self) -> dict:
        found = {"os": self.os, "arch": self.arch, "python": self.python, "toolchain": self.toolchain,
                 **({"emulation": self.emulation} if self.emulation else {})}
        return {**found, "wheels": self.wheels} if self.wheels else found


def installed_wheels(prefix: Path) -> dict[str, str]:
    """Wheel file name -> sha256 for the environment at ``prefix``; empty where it was not
    installed from a recorded wheelhouse (a developer's own virtualenv)."""
    try:
        lines = (prefix / WHEEL_HASHES).read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split(None, 1) for line in lines if line.strip())
    return {name.strip().lstrip("*"): sha for sha, name in pairs if len(sha) == 64}


def detect(target: JobTarget) -> CompileEnvironment:
    """Detect this host and check it can build ``target`` natively."""
    os_name, arch = this_machine()
    if (os_name, arch) != (target.build_os, target.build_arch):
        raise PlatformMismatch(
            f"target {target.name} must be built on {target.build_os}/{target.build_arch},"
            f" but this host is {os_name}/{arch}"
        )
    toolchain = {name: v for name in TOOLCHAIN if (v := installed_version(name))}
    return CompileEnvironment(os_name, arch, f"{_platform.python_implementation()} {sys.version.split()[0]}", toolchain,
                              installed_wheels(Path(sys.prefix)), compatibility_layer())
