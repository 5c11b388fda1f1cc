"""Target platforms: what a package is built for, and which build environment serves it.

A target is a promise about where the package will run. modelpack builds each target on
a host whose OS matches it (never a cross-build pretending to be native), so every
target names the OS/architecture a build host must have and the build environment
(a folder under ``images/`` for Docker hosts) that carries its toolchain.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One target platform.

    ``build_os``/``build_arch`` describe the machine that builds and self-tests the
    package; for Android that is a Linux arm64 host, because no Android device is part
    of the build, and the manifest says so.
    """

    name: str
    os: str
    arch: str
    build_os: str
    build_arch: str
    environment: str
    docker_platform: str | None
    description: str


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("linux-x86_64", "linux", "x86_64", "linux", "x86_64", "linux-x86_64",
               "linux/amd64", "Linux on 64-bit x86"),
        Target("linux-aarch64", "linux", "aarch64", "linux", "aarch64", "linux-aarch64",
               "linux/arm64", "Linux on 64-bit ARM"),
        Target("android-arm64", "android", "aarch64", "linux", "aarch64", "linux-aarch64",
               "linux/arm64", "Android on arm64-v8a, built and checked on Linux arm64"),
        Target("windows-x86_64", "windows", "x86_64", "windows", "x86_64", "windows-x86_64",
               None, "Windows on 64-bit x86, built on a Windows host over SSH"),
        Target("ios-arm64", "ios", "aarch64", "macos", "aarch64", "macos-arm64",
               None, "iOS on arm64, built on a macOS host with Xcode over SSH"),
    )
}


class UnknownTargetError(KeyError):
    """Raised for a target name that is not in :data:`TARGETS`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown target {self.name!r}; known targets: {', '.join(TARGETS)}"


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTargetError(name) from None



def known_target(name: str) -> str:
    """Validator for target names in specs and inventories."""
    if name not in TARGETS:
        raise ValueError(str(UnknownTargetError(name)))
    return name
