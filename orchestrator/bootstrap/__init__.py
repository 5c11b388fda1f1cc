"""``modelpack hosts bootstrap``: make an SSH build host ready when it has only Python.

The host gets the same pinned engines as the Docker images (``images/<environment>/``),
as wheels for its own platform and Python version downloaded on the controller, pushed
content-addressed (a wheel the host already holds is not sent again), and installed with
``--no-index`` into a venv in the host's work directory. The environment is named by a
hash of the host's Python and every wheel's sha256: while that hash is unchanged a
bootstrap reuses it in seconds, and builds use it (the hash is also the host's
environment id in the package cache key). Changing a pin changes the hash, and the next
bootstrap builds a fresh environment beside the old one before switching to it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Protocol

from ..images import IMAGES_DIR, ImageError, download_wheelhouse, requirement_lists
from ..runtime.checks import content_sha256
from ..runtime.platforms import normalise_arch, normalise_os
from ..targets import TARGETS
from ..transports.ssh import hostside_program
from . import hostside_env

#: pip, for a host whose Python has no venv (Windows' embeddable distribution): run from
#: its own wheel there, it installs the others
EMBEDDABLE_PIP = Path(__file__).with_name("requirements-embeddable.txt")
#: the SSH host-side program with the environment builder added
PROGRAM = hostside_program(Path(hostside_env.__file__))


class WheelWorkspace(Protocol):
    """Where the wheels go: a workspace whose push sends only what the host lacks."""

    root: PurePosixPath
    sent_bytes: int

    def push(self, files: Mapping[str, Path]) -> None: ...

    def __enter__(self) -> "WheelWorkspace": ...

    def __exit__(self, *exc: object) -> None: ...


class BootstrapHost(Protocol):
    """What bootstrapping needs of a host: the SSH transport's host-side calls."""

    name: str

    def facts(self) -> dict[str, Any]: ...

    def forget_facts(self) -> None: ...

    def open(self, environment: str, labels: Mapping[str, str], lifetime: float | None = None) -> WheelWorkspace: ...

    def call(self, operation: str, params: dict[str, Any], timeout: float = 120.0, payload: Any = None,
             program: str | None = None) -> Any: ...


class BootstrapError(RuntimeError):
    """The host cannot be bootstrapped; the message says why."""


@dataclass(frozen=True)
class Bootstrapped:
    host: str
    environment: str
    env_hash: str
    reused: bool
    wheels: int
    sent_bytes: int
    python: str


def environment_for(facts: dict[str, Any]) -> str:
    """The build environment a host's OS and architecture serve (targets.py says which)."""
    here = (normalise_os(facts["os"]), normalise_arch(facts["machine"]))
    for target in TARGETS.values():
        if (target.build_os, target.build_arch) == here:
            return target.environment
    known = sorted({f"{t.build_os}/{t.build_arch}" for t in TARGETS.values()})
    raise BootstrapError(f"no build environment for a {here[0]}/{here[1]} host (known: {', '.join(known)})")


#: how uv names each environment's platform when it resolves dependencies for it
_UV_PLATFORMS = {"windows-x86_64": "x86_64-pc-windows-msvc", "macos-arm64": "aarch64-apple-darwin"}


def wheel_platforms(name: str, facts: dict[str, Any], recipe: dict[str, Any]) -> tuple[tuple[str, ...], str, str | None]:
    """(pip platform tags, uv platform, macOS deployment target) for a host. A macOS host
    takes wheels built for its own macOS version or older."""
    if name == "macos-arm64":
        major = int((facts.get("os_version") or "11").split(".")[0])
        tags = tuple(f"macosx_{v}_0_arm64" for v in range(max(major, 11), 10, -1))
        return tags, _UV_PLATFORMS[name], f"{major}.0"
    tags = tuple(recipe["wheel_platforms"])
    if name in _UV_PLATFORMS:
        return tags, _UV_PLATFORMS[name], None
    # manylinux_2_28_x86_64 → x86_64-manylinux_2_28
    glibc = "_".join(tags[0].split("_")[:3])
    machine = tags[0][len(glibc) + 1:]
    return tags, f"{machine}-{glibc}", None


def wheelhouse_for(facts: dict[str, Any], pins: Mapping[str, str] | None = None) -> Path:
    """The wheels a host needs: its environment's pins (with the host's own ``pins`` from
    hosts.yaml in their place), resolved for its platform and Python (including
    dependencies only that platform has), downloaded on this machine. A host whose Python
    is an embeddable distribution (no venv) also gets the pip wheel that installs them."""
    name = environment_for(facts)
    folder = IMAGES_DIR / name
    recipe_file = folder / "image.json" if (folder / "image.json").is_file() else folder / "host.json"
    recipe = json.loads(recipe_file.read_text(encoding="utf-8"))
    shared = IMAGES_DIR / recipe.get("files_from", name)
    extra = [folder / "requirements-extra.txt"] if (folder / "requirements-extra.txt").is_file() else []
    lists = requirement_lists(shared, extra)
    if facts.get("embeddable"):
        lists.append(([EMBEDDABLE_PIP], True))
    tags, uv_platform, deployment_target = wheel_platforms(name, facts, recipe)
    with tempfile.TemporaryDirectory(prefix="modelpack-pins-") as tmp:
        try:
            return download_wheelhouse(f"{name}-py{facts['python_version']}", with_pins(lists, pins or {}, Path(tmp)),
                                       facts["python_version"], tags, uv_platform, deployment_target)
        except ImageError as exc:
            raise BootstrapError(str(exc)) from None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def with_pins(lists: list[tuple[list[Path], bool]], pins: Mapping[str, str],
              folder: Path) -> list[tuple[list[Path], bool]]:
    """``lists`` with a host's own versions (hosts.yaml ``pins``) in place of the shared
    ones, as copies written to ``folder``. Only a package the lists pin can be given
    another version: a pin override says "this host runs that package at this version",
    not "add a package"."""
    if not pins:
        return lists
    wanted = {_canonical(name): version for name, version in pins.items()}
    replaced: set[str] = set()
    changed: list[tuple[list[Path], bool]] = []
    for files, nodeps in lists:
        copies = []
        for path in files:
            lines = []
            for line in path.read_text(encoding="utf-8").splitlines():
                name = re.split(r"[=<>!~;\[\s]", line.strip(), maxsplit=1)[0]
                if name and not name.startswith("#") and _canonical(name) in wanted:
                    replaced.add(_canonical(name))
                    line = f"{name}=={wanted[_canonical(name)]}"
                lines.append(line)
            copies.append(folder / f"{len(changed)}-{len(copies)}-{path.name}")
            copies[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
        changed.append((copies, nodeps))
    unknown = sorted(name for name in pins if _canonical(name) not in replaced)
    if unknown:
        raise BootstrapError(f"pins: {', '.join(unknown)} is not a package this host's environment pins;"
                             f" a host may only change the version of a pinned package")
    return changed


def environment_hash(facts: dict[str, Any], wheels: list[Path]) -> str:
    """Names an environment by everything that decides it: the host's Python and
    platform, and each wheel's name and content."""
    digest = hashlib.sha256(json.dumps([facts["python_version"], facts["platform"]]).encode())
    for wheel in sorted(wheels, key=lambda p: p.name):
        digest.update(wheel.name.encode() + b"\0" + bytes.fromhex(content_sha256(wheel)))
    return digest.hexdigest()


def bootstrap(transport: BootstrapHost, wheelhouse: Path | None = None,
              on_step: Callable[[str], None] = lambda text: None, pins: Mapping[str, str] | None = None) -> Bootstrapped:
    """Make ``transport``'s host ready, reusing its environment when the hash matches;
    ``pins`` are the host's own versions of pinned packages (hosts.yaml)."""
    facts = transport.facts()
    environment = environment_for(facts)
    if wheelhouse is None:
        on_step(f"wheels for {environment}, Python {facts['python_version']}")
    house = wheelhouse or wheelhouse_for(facts, pins)
    wheels = sorted(house.glob("*.whl"))
    if not wheels:
        raise BootstrapError(f"{house}: no .whl files in the wheelhouse")
    env_hash = environment_hash(facts, wheels)
    if facts.get("env_hash") == env_hash:
        return Bootstrapped(transport.name, environment, env_hash, True, len(wheels), 0, facts["env_python"])
    on_step(f"pushing {len(wheels)} wheels")
    with transport.open(environment, {"org.modelpack.run": "bootstrap"}) as workspace:
        workspace.push({f"wheels/{w.name}": w for w in wheels})
        on_step(f"creating environment {env_hash[:12]}")
        answer = transport.call("make_env", {"hash": env_hash, "wheels": f"{workspace.root}/wheels"}, timeout=3600,
                                program=PROGRAM)
        sent = workspace.sent_bytes
    transport.forget_facts()
    return Bootstrapped(transport.name, environment, env_hash, answer["reused"], len(wheels), sent, answer["python"])

