"""Docker transport: a build host is a Docker engine; a workspace is a fresh container.

Everything goes through the Docker SDK (no ``docker`` CLI): files travel as tar streams
(``put_archive``/``get_archive``), commands run through the low-level exec API whose
raw socket is read here so output streams live and a watchdog can cut a hung command
off. Containers are labelled, run with no network, no capabilities and a seccomp
profile, and are removed on success, failure and Ctrl-C alike.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Collection, Iterator, Mapping

import docker
import docker.constants
import docker.errors
import docker.tls
import docker.types
import paramiko
import requests.exceptions
from docker.utils.socket import frames_iter

from ..inventory import Host
from ..runtime.archive import ArchiveError
from ..runtime.platforms import normalise_arch
from .base import CommandTimeout, HostStatus, LineSink, Transport, TransportError, Workspace, disk_problem
from .emulation import QEMU_CPU, cpuinfo_file
from .seccomp import SECURITY_OPT
from .tarstream import pack, unpack_single_file
from .watchdog import Watchdog

log = logging.getLogger(__name__)

LABEL = "org.modelpack"
#: which controller process owns a container: "<hostname>:<pid>"
OWNER = f"{LABEL}.controller"
#: the engine-wide benchmark lease (a container of this name), and how long one may be held
LEASE = "modelpack-benchmark-lease"
LEASE_SECONDS = 900
#: marks a build workspace's container: what a benchmark lease holder may pause
WORKSPACE = f"{LABEL}.workspace"


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_gone(owner: str) -> bool:
    """True when ``owner`` names a process on this machine that no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another controller's; not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
MAX_PULL_BYTES = 16 << 30
#: what the engine, its HTTP link or an ssh:// link (docker-py drives paramiko) can raise
_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError, paramiko.SSHException)


@contextlib.contextmanager
def _infrastructure(what: str) -> Iterator[None]:
    """Turn any engine or link error into a :class:`TransportError` naming the step."""
    try:
        yield
    except TransportError:
        raise
    except _ERRORS as exc:
        raise TransportError(f"{what}: {exc}") from exc


#: (engine, environment) -> the image tag to run it in; the controller's builds a missing
#: image first (images.on_demand). Raises TransportError when there is none.
ImageSource = Callable[[docker.DockerClient, str], str]


class DockerTransport(Transport):
    def __init__(self, host: Host, images: ImageSource | None = None, api_timeout: float = 60.0,
                 connect_timeout: float = 60.0) -> None:
        self.host = host
        self.name = host.name
        self._images = images
        self._api_timeout = api_timeout
        #: how long the engine may take to answer at first (--connect-timeout): an engine
        #: that accepts connections but never answers must not hold the run longer
        self._connect_timeout = connect_timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        #: an image of this engine's that holds the benchmark lease (the last one opened)
        self._lease_image: str | None = None
        #: the engine's architecture and memory, asked once: every workspace opened needs them
        self._engine_facts: tuple[str, int] | None = None

    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                with _infrastructure(f"connecting to the Docker engine of {self.name}"):
                    if self.host.docker_host:
                        client = self._remote_client()
                    else:
                        client = docker.from_env(timeout=self._connect_timeout)
                    client.ping()
                    client.api.timeout = self._api_timeout  # it answers: later calls get the usual limit
                    self._client = client
            return self._client

    def _remote_client(self) -> docker.DockerClient:
        settings = {"base_url": self.host.docker_host, "timeout": self._connect_timeout, "tls": self._tls()}
        if not self.host.tls_ca:
            return docker.DockerClient(**settings)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's CA, which
        # would verify the engine against the system CAs instead of tls_ca; the SDK asks
        # for the API version while constructing, so that first call is made by hand
        first = docker.DockerClient(version=docker.constants.MINIMUM_DOCKER_API_VERSION, **settings)
        first.api.trust_env = False
        try:
            version = first.version()["ApiVersion"]
        finally:
            first.close()
        client = docker.DockerClient(version=version, **settings)
        client.api.trust_env = False
        return client

    def _tls(self) -> docker.tls.TLSConfig | bool:
        """TLS for a tcp:// engine: the engine's certificate is always verified (against
        tls_ca, else the system's CAs), never accepted blindly. ssh:// engines go through
        docker-py's paramiko client, which checks ~/.ssh/known_hosts and rejects unknown keys."""
        if not (self.host.docker_host or "").startswith("tcp://"):
            return False
        if not (self.host.tls_ca or self.host.tls_cert):  # allowed only with insecure: true (inventory.py)
            log.warning("%s: the Docker engine at %s is reached without TLS (insecure: true): it is not"
                        " authenticated and the traffic is not encrypted", self.name, self.host.docker_host)
            return False
        cert = (str(Path(self.host.tls_cert).expanduser()), str(Path(self.host.tls_key).expanduser())) \
            if self.host.tls_cert and self.host.tls_key else None
        try:
            ca = str(Path(self.host.tls_ca).expanduser()) if self.host.tls_ca else None
            return docker.tls.TLSConfig(client_cert=cert, ca_cert=ca, verify=True)
        except docker.errors.TLSParameterError as exc:
            raise TransportError(f"{self.name}: TLS settings: {exc}") from None

    def image_for(self, environment: str) -> str:
        """The host's own ``image:`` when it names one, else what the controller provides."""
        if self.host.image:
            return self.host.image
        if self._images is None:
            raise TransportError(f"{self.name}: no image for {environment}: set image: in the hosts file")
        with _infrastructure(f"providing the {environment} image on {self.name}"):
            return self._images(self.client(), environment)

    def architectures(self, image: str) -> tuple[str, str]:
        """(engine architecture, image architecture); they differ under emulation."""
        engine_arch = self.engine_facts()[0]
        found = self.client().images.get(image)
        return engine_arch, normalise_arch(found.attrs.get("Architecture", engine_arch))

    def engine_facts(self) -> tuple[str, int]:
        """(architecture, memory in bytes) of the engine, asked once per transport: they do
        not change while a run lasts, and ``docker info`` is slow on a busy engine."""
        if self._engine_facts is None:
            with _infrastructure(f"asking the Docker engine of {self.name} for its architecture and memory"):
                info = self.client().info()
            self._engine_facts = (normalise_arch(info.get("Architecture", "")), int(info.get("MemTotal") or 0))
        return self._engine_facts

    def emulation_settings(self, image: str) -> dict[str, Any]:
        """Container settings an emulated image needs (see emulation.py); none when native.
        Emulation is detected from the architectures, never taken from a flag."""
        engine_arch, image_arch = self.architectures(image)
        if engine_arch == image_arch:
            return {}
        if image_arch not in QEMU_CPU:
            raise TransportError(f"{self.name}: no known way to run {image_arch} images on a {engine_arch} engine")
        if not _is_local_engine(self.client()):
            raise TransportError(f"{self.name}: emulated {image_arch} builds need the engine on this machine (the"
                                 f" cpuinfo file is bind-mounted from here); use a native {image_arch} engine")
        cpuinfo = str(cpuinfo_file(image_arch))
        return {"environment": {"QEMU_CPU": QEMU_CPU[image_arch]},
                "mounts": [docker.types.Mount("/proc/cpuinfo", cpuinfo, type="bind", read_only=True)]}

    def memory_limit(self) -> int:
        """Bytes each build container may use: hosts.yaml's ``memory_gb``, else 3/4 of the
        engine's memory shared among the host's slots, so that parallel jobs cannot take
        the engine (and everything else on it) down together."""
        if self.host.memory_gb:
            return int(self.host.memory_gb * (1 << 30))
        total = self.engine_facts()[1]
        return max(int(total * 0.75 / self.host.slots), 256 << 20) if total else 0

    def probe(self, environment: str) -> HostStatus:
        try:
            with _infrastructure("probe"):
                client = self.client()
                client.ping()
                info = client.info()
                arch = normalise_arch(info.get("Architecture", ""))
                image = self.image_for(environment)
                try:
                    found = client.images.get(image)
                except docker.errors.ImageNotFound:
                    return HostStatus(False, f"engine answers but image {image} is missing")
                image_arch = normalise_arch(found.attrs.get("Architecture", arch))
                problem = disk_problem(self.host, _local_free_bytes(client, info), "the engine's data root")
                if problem:
                    return HostStatus(False, problem)
                return HostStatus(True, f"Docker {info.get('ServerVersion', '?')}, image {image}",
                                  emulated=image_arch != arch, facts={"environment_id": found.id})
        except TransportError as exc:
            return HostStatus(False, str(exc))

    def open(self, environment: str, labels: Mapping[str, str], lifetime: float | None = None) -> "DockerWorkspace":
        image = self.image_for(environment)
        self._lease_image = image  # any image this engine has will do to hold the lease
        return DockerWorkspace(self, image, labels, lifetime)

    grants_benchmark_lease = True

    @property
    def machine(self) -> str:
        return f"docker:{self.host.docker_host or 'local'}"

    @contextlib.contextmanager
    def benchmark_lease(self, holder: str) -> Iterator[None]:
        """The lease is a container named :data:`LEASE` on the engine, created and never
        started: the engine refuses a second container of one name (409), so creating it
        is an atomic test-and-set that every controller using this engine sees (network
        names are not: the engine makes a second network of the same name). A lease whose
        controller died, or that has outlived :data:`LEASE_SECONDS`, is broken."""
        client = self.client()
        image = self._lease_image
        if image is None:
            raise TransportError(f"{self.name}: no workspace was opened here, so no image to hold a lease with")
        while True:
            labels = {LABEL: "1", OWNER: _owner(), f"{LABEL}.lease.holder": holder,
                      f"{LABEL}.lease.expires": str(int(time.time() + LEASE_SECONDS))}
            try:
                with _infrastructure(f"taking the benchmark lease on {self.name}"):
                    lease = client.containers.create(image, command=["true"], name=LEASE, labels=labels,
                                                     network_mode="none")
                break
            except TransportError as exc:
                if not isinstance(exc.__cause__, docker.errors.APIError) or exc.__cause__.status_code != 409:
                    raise
                self._break_stale_lease(client)
                time.sleep(0.1)
        try:
            yield
        finally:
            with contextlib.suppress(*_ERRORS):
                lease.remove(force=True)

    def _break_stale_lease(self, client: docker.DockerClient) -> None:
        """Break a lease whose holder died or overran, and resume what it paused: only a
        lease holder pauses workspaces, so with no live holder none should stay paused.
        The lease is removed by its id, so a fresh lease taken meanwhile is never hit."""
        with contextlib.suppress(*_ERRORS):
            for lease in client.containers.list(all=True, filters={"name": f"^/{LEASE}$"}):
                expires = lease.labels.get(f"{LABEL}.lease.expires", "0")
                owner = lease.labels.get(OWNER, "")
                if _owner_gone(owner) or (expires.isdigit() and int(expires) < time.time()):
                    log.warning("%s: breaking a stale benchmark lease held by %s", self.name, owner)
                    lease.remove(force=True)
                    for container in client.containers.list(filters={"label": WORKSPACE, "status": "paused"}):
                        with contextlib.suppress(*_ERRORS):
                            container.unpause()

    @contextlib.contextmanager
    def others_paused(self, mine: Collection[Workspace]) -> Iterator[int]:
        """Pause the running build containers on this engine that are not ``mine``: other
        controllers' jobs, which the engine's labels show and ``docker pause`` freezes."""
        own = {w.container_id for w in mine if isinstance(w, DockerWorkspace)}
        paused = []
        with contextlib.suppress(*_ERRORS):
            for container in self.client().containers.list(filters={"label": WORKSPACE, "status": "running"}):
                if container.id not in own:
                    with contextlib.suppress(*_ERRORS):
                        container.pause()
                        paused.append(container)
        try:
            yield len(paused)
        finally:
            for container in paused:
                with contextlib.suppress(*_ERRORS):
                    container.unpause()

    def reap(self) -> list[str]:
        """Remove modelpack containers whose controller process on this machine died."""
        removed = []
        with _infrastructure("listing leftover containers"):
            for container in self.client().containers.list(all=True, filters={"label": LABEL}):
                owner = container.labels.get(OWNER, "")
                if _owner_gone(owner):
                    container.remove(force=True)
                    removed.append(f"container {container.short_id} ({owner})")
        return removed


class DockerWorkspace(Workspace):
    root = PurePosixPath("/work")
    python = "python"

    def __init__(self, transport: DockerTransport, image: str, labels: Mapping[str, str],
                 lifetime: float | None = None) -> None:
        self._transport = transport
        self._image = image
        self._container: Any = None
        self._closed = False
        client = transport.client()
        self._memory_limit = transport.memory_limit()
        try:
            with _infrastructure(f"creating a container from {image} on {transport.name}"):
                # the main process is the container's lifetime: an orphan (its controller
                # killed) stops and is removed by the engine once that has passed
                self._container = client.containers.create(
                    image,
                    command=["sleep", str(math.ceil(lifetime)) if lifetime else "infinity"],
                    auto_remove=bool(lifetime),
                    labels={LABEL: "1", OWNER: _owner(), WORKSPACE: "1", **labels},
                    network_mode="none",
                    cap_drop=["ALL"],
                    security_opt=SECURITY_OPT,
                    platform=transport.host.platform,
                    working_dir=str(self.root),
                    pids_limit=4096,
                    mem_limit=self._memory_limit, memswap_limit=self._memory_limit,  # no swap beyond it
                    **transport.emulation_settings(image),
                )
                self._container.start()
        except BaseException:
            self.close()
            raise

    @property
    def container_id(self) -> str | None:
        return self._container.id if self._container is not None else None

    def push(self, files: Mapping[str, Path]) -> None:
        with _infrastructure(f"copying files into the container on {self._transport.name}"):
            with pack(files) as stream:
                if not self._container.put_archive(str(self.root), stream):
                    raise TransportError("the engine refused the upload")

    def run(self, argv: list[str], env: Mapping[str, str], timeout: float, on_line: LineSink) -> int:
        api = self._transport.client().api
        with _infrastructure(f"running {argv[0]} in the container on {self._transport.name}"):
            try:
                exec_id = api.exec_create(self._container.id, argv, environment=dict(env),
                                          workdir=str(self.root))["Id"]
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # "container is not running"
                    raise TransportError(f"the build container on {self._transport.name} died"
                                         f" before {argv[0]} could start") from exc
                raise
            sock = api.exec_start(exec_id, socket=True)
            raw = getattr(sock, "_sock", sock)
            raw.settimeout(None)  # the watchdog below bounds the wait, not the socket

            def cut_off() -> None:
                with contextlib.suppress(*_ERRORS):
                    self._container.kill()
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RDWR)

            pending = b""
            with Watchdog(timeout, cut_off) as watchdog:
                try:
                    for _, payload in frames_iter(sock, tty=False):
                        pending += payload
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            on_line(line.decode("utf-8", "replace"))
                except OSError:
                    if not watchdog.fired:
                        raise
                finally:
                    with contextlib.suppress(OSError):
                        sock.close()
            if pending:
                on_line(pending.decode("utf-8", "replace"))
            if watchdog.fired:
                raise CommandTimeout(f"{argv[0]} exceeded its {timeout:g} s limit on {self._transport.name} and was killed")
            try:
                code = api.exec_inspect(exec_id).get("ExitCode")
                self._container.reload()
            except docker.errors.NotFound:  # killed, and already removed by the engine (auto_remove)
                raise TransportError(f"the build container on {self._transport.name} died (and is gone) while"
                                     f" the command ran") from None
            if self._container.status != "running":
                raise TransportError(f"the build container on {self._transport.name} died"
                                     f" ({self._container.status}) while the command ran")
            if code is None:
                raise TransportError(f"{argv[0]} ended without an exit code on {self._transport.name}")
            return int(code)

    def pull(self, relative: str, dest: Path, max_bytes: int) -> None:
        path = self.root / relative
        with _infrastructure(f"copying {relative} out of the container on {self._transport.name}"):
            try:
                chunks, _stat = self._container.get_archive(str(path))
            except docker.errors.NotFound:
                raise TransportError(f"{path} does not exist in the container") from None
            try:
                unpack_single_file(chunks, PurePosixPath(relative).name, dest, min(max_bytes, MAX_PULL_BYTES))
            except ArchiveError as exc:
                raise TransportError(f"refusing what {self._transport.name} sent: {exc}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        try:
            self._container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except _ERRORS as exc:  # the engine went away; the reaper finds it by label later
            log.warning("could not remove container %s on %s: %s", self._container.id[:12], self._transport.name, exc)

    def out_of_memory(self) -> str | None:
        """The container's cgroup counts the processes the kernel killed at its memory
        limit (cgroup v2 ``memory.events``, v1 ``memory.oom_control``): one or more means
        the job outgrew the limit."""
        if self._container is None or not self._memory_limit:
            return None
        for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
            try:
                code, output = self._container.exec_run(["cat", path])
            except _ERRORS:
                return None
            if code != 0:
                continue
            counts = dict(line.split(None, 1) for line in output.decode("utf-8", "replace").splitlines()
                          if len(line.split()) == 2)
            if counts.get("oom_kill", "0").strip() not in ("0", ""):
                return (f"out of memory: the job was killed at the build container's limit of"
                        f" {self._memory_limit / (1 << 30):.2f} GiB on {self._transport.name}"
                        f" (raise memory_gb in hosts.yaml, or use a host with more memory)")
            return None
        return None

    def pause(self) -> bool:
        with contextlib.suppress(*_ERRORS):
            self._container.pause()
            return True
        return False

    def resume(self) -> None:
        with contextlib.suppress(*_ERRORS):
            self._container.unpause()

    def provenance(self) -> dict[str, Any]:
        """Image identity, and whether the container runs under emulation: an image
        whose architecture differs from the engine's runs through qemu, and timings
        measured there must not pass for native ones."""
        engine_arch, image_arch = self._transport.architectures(self._image)
        return {"image": self._image, "image_id": self._container.image.id, "image_arch": image_arch,
                "emulated": image_arch != engine_arch}


def _is_local_engine(client: docker.DockerClient) -> bool:
    return client.api.base_url.startswith(("http+docker://localhost", "http+unix://"))


def _local_free_bytes(client: docker.DockerClient, info: Mapping[str, Any]) -> int | None:
    """Free space under the engine's data root when the engine runs on this machine;
    None for a remote engine (the Docker API does not report free space)."""
    root = info.get("DockerRootDir")
    if not root or not _is_local_engine(client):
        return None
    try:
        return shutil.disk_usage(root).free
    except OSError:  # the root is not visible from here (rootless engine, another namespace)
        return None
