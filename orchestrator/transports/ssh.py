"""SSH transport: a build host reached with OpenSSH, through paramiko.

Host keys are verified, never accepted blindly: against known_hosts or a key pinned in
hosts.yaml, and an unknown key is refused with its fingerprint and how to pin it. One
connection per host serves a whole run. Files travel as tar streams over exec channels
with a large window; commands run through the host's shell dialect (see shells.py) with
stdout and stderr drained together, so large output cannot deadlock. Keepalive alone
does not notice a peer that vanished from the network, so modelpack asks the server to
answer within a liveness timeout whenever a channel has been silent that long.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping

import paramiko

from ..inventory import Host
from ..runtime.archive import ArchiveError
from .base import CommandTimeout, HostStatus, LineSink, Transport, TransportError, Workspace, disk_problem
from .shells import DETECT_PROBE, DIALECTS, PosixShell, Shell, detect
from .tarstream import pack, unpack_single_file

log = logging.getLogger(__name__)

WINDOW = 1 << 27  # 128 MiB: paramiko's small default window caps throughput
PACKET = 1 << 15
MAX_PULL_BYTES = 16 << 30
#: in a workspace: the process group of the command running there
PID_FILE = ".modelpack-pid"


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """Unknown keys are refused, with what the user needs to check and pin it."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise TransportError(
            f"{hostname}: unknown SSH host key {key.get_name()} {fingerprint(key)}; refusing to connect."
            f" Check the fingerprint out of band, then pin it in hosts.yaml as"
            f" host_key: \"{key.get_name()} {key.get_base64()}\" or add it to known_hosts"
        )


class SshTransport(Transport):
    def __init__(self, host: Host, connect_timeout: float = 15.0, liveness_timeout: float | None = None) -> None:
        self.host = host
        self.name = host.name
        self.connect_timeout = connect_timeout
        self.liveness_timeout = liveness_timeout or host.liveness_timeout
        self._client: paramiko.SSHClient | None = None
        self._shell: Shell | None = None
        self._lock = threading.Lock()

    # -- connection ------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        """hosts.yaml first, then ~/.ssh/config for what it leaves open (aliases too)."""
        config_path = Path.home() / ".ssh" / "config"
        found: dict[str, Any] = {}
        if config_path.is_file():
            found = paramiko.SSHConfig.from_path(str(config_path)).lookup(self.host.address or "")
        key = self.host.key or (found.get("identityfile") or [None])[0]
        return {
            "hostname": found.get("hostname", self.host.address),
            "port": self.host.port if "port" in self.host.model_fields_set else int(found.get("port", 22)),
            "username": self.host.user or found.get("user"),
            "key_filename": str(Path(key).expanduser()) if key else None,
        }

    def client(self) -> paramiko.SSHClient:
        with self._lock:
            if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
                return self._client
            settings = self._settings()
            client = paramiko.SSHClient()
            known = Path(self.host.known_hosts or Path.home() / ".ssh" / "known_hosts").expanduser()
            if known.is_file():
                client.load_host_keys(str(known))
            if self.host.host_key:
                kind, _, data = self.host.host_key.strip().partition(" ")
                try:
                    pinned = paramiko.PKey.from_type_string(kind, base64.b64decode(data.split()[0]))
                except Exception as exc:  # paramiko raises several types for bad keys
                    raise TransportError(f"{self.name}: host_key in hosts.yaml is not a valid public key: {exc}") from None
                lookup = settings["hostname"] if settings["port"] == 22 else f"[{settings['hostname']}]:{settings['port']}"
                client.get_host_keys().add(lookup, pinned.get_name(), pinned)
            client.set_missing_host_key_policy(_RefuseUnknownHost())
            try:
                client.connect(
                    settings["hostname"], port=settings["port"], username=settings["username"],
                    key_filename=settings["key_filename"], allow_agent=True,
                    look_for_keys=settings["key_filename"] is None, timeout=self.connect_timeout,
                    banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout,
                )
            except paramiko.BadHostKeyException as exc:
                raise TransportError(
                    f"{self.name}: THE SSH HOST KEY HAS CHANGED ({exc.key.get_name()} {fingerprint(exc.key)},"
                    f" expected {fingerprint(exc.expected_key)}). Someone may be intercepting the connection,"
                    f" or the host was reinstalled; refusing to connect until known_hosts or host_key is corrected"
                ) from None
            except TransportError:
                raise
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise TransportError(f"{self.name}: cannot connect to {settings['hostname']}:{settings['port']}:"
                                     f" {exc or type(exc).__name__}") from exc
            transport = client.get_transport()
            assert transport is not None
            transport.set_keepalive(5)
            self._client = client
            return client

    def alive(self) -> bool:
        """Ask the server to answer now; False when it does not within the liveness timeout."""
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            return False
        answered = threading.Event()

        def ask() -> None:
            try:
                transport.global_request("keepalive@openssh.com", wait=True)
                answered.set()
            except Exception:  # the connection broke while asking
                pass

        threading.Thread(target=ask, daemon=True).start()
        return answered.wait(self.liveness_timeout)

    def exit_status(self, channel: paramiko.Channel) -> int:
        """The command's exit code; paramiko's own wait has no timeout, and a host that
        vanishes between end-of-output and exit status would hang it for ever."""
        while not channel.status_event.wait(self.liveness_timeout):
            if not self.alive():
                self.drop()
                raise TransportError(f"{self.name}: the host stopped answering before reporting an exit status")
        return channel.recv_exit_status()

    def guard_progress(self, progressed: threading.Event, finished: threading.Event) -> None:
        """Drop the connection when an upload stops moving and the host does not answer.

        A peer that vanished mid-upload leaves the sender blocked inside paramiko's
        socket write until TCP gives up, which takes about 15 minutes; no timeout on the
        channel reaches it. Closing the connection from here makes that write fail at once.
        """
        while not finished.wait(self.liveness_timeout):
            if progressed.is_set():
                progressed.clear()
            elif not self.alive():
                self.drop()
                return

    def drop(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def shell(self) -> Shell:
        if self._shell is None:
            if self.host.shell:
                self._shell = DIALECTS[self.host.shell]
            else:
                code, output = self.execute(DETECT_PROBE, timeout=self.connect_timeout)
                self._shell = detect(output.decode("utf-8", "replace"))
        return self._shell

    # -- commands ----------------------------------------------------------------------
    def channel(self) -> paramiko.Channel:
        transport = self.client().get_transport()
        assert transport is not None
        try:
            # paramiko waits up to an hour for a dead peer to confirm a channel by default
            channel = transport.open_session(window_size=WINDOW, max_packet_size=PACKET,
                                             timeout=self.liveness_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.drop()
            raise TransportError(f"{self.name}: cannot open a channel: {exc}") from exc
        channel.settimeout(self.liveness_timeout)
        return channel

    def stream(self, command: str, timeout: float, status: list[int]) -> Iterator[bytes]:
        """Run ``command`` and yield its combined output as it comes; its exit code is
        appended to ``status`` at the end. Silence longer than the liveness timeout
        triggers a liveness check."""
        channel = self.channel()
        channel.set_combine_stderr(True)
        channel.settimeout(1.0)
        channel.exec_command(command)
        deadline = time.monotonic() + timeout
        silent_since = time.monotonic()
        try:
            while True:
                try:
                    data = channel.recv(1 << 16)
                except socket.timeout:
                    now = time.monotonic()
                    if now > deadline:
                        raise CommandTimeout(f"{self.name}: command exceeded its {timeout:g} s limit and was stopped")
                    if now - silent_since > self.liveness_timeout:
                        if not self.alive():
                            self.drop()
                            raise TransportError(f"{self.name}: the host stopped answering"
                                                 f" (no reply within {self.liveness_timeout:g} s)")
                        silent_since = now
                    continue
                if not data:
                    break
                silent_since = time.monotonic()
                yield data
            status.append(self.exit_status(channel))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.drop()
            raise TransportError(f"{self.name}: connection lost: {exc}") from exc
        finally:
            channel.close()

    def execute(self, command: str, timeout: float) -> tuple[int, bytes]:
        status: list[int] = []
        output = b"".join(self.stream(command, timeout, status))
        return status[0], output

    # -- Transport ---------------------------------------------------------------------
    def probe(self, environment: str) -> HostStatus:
        try:
            shell = self.shell()
            python = self.host.python
            code, output = self.execute(
                shell.command([python, "-c", "import sys, shutil, tempfile, onnxruntime, numpy;"
                               "print(sys.version.split()[0], onnxruntime.__version__, numpy.__version__);"
                               "print(shutil.disk_usage(tempfile.gettempdir()).free)"]),
                timeout=60)
        except TransportError as exc:
            return HostStatus(False, str(exc))
        text = output.decode("utf-8", "replace").strip()
        if code != 0:
            return HostStatus(False, f"{python} cannot import the engines: {text.splitlines()[-1:] or code}")
        text, _, free = text.partition("\n")  # the versions identify the environment; free space does not
        problem = disk_problem(self.host, int(free) if free.strip().isdigit() else None, "its temporary folder")
        if problem:
            return HostStatus(False, problem)
        return HostStatus(True, f"ssh {self.host.address} ({shell.name}), Python/onnxruntime/numpy {text}",
                          emulated=False,
                          facts={"environment_id": "ssh:" + hashlib.sha256(text.encode()).hexdigest()})

    def open(self, environment: str, labels: Mapping[str, str]) -> "SshWorkspace":
        shell = self.shell()
        if not isinstance(shell, PosixShell):
            raise TransportError(f"{self.name}: workspaces on {shell.name} hosts are not supported yet")
        code, output = self.execute(shell.mktemp("modelpack"), timeout=60)
        root = output.decode().strip()
        if code != 0 or not root.startswith("/"):
            raise TransportError(f"{self.name}: cannot create a work directory: {root[-200:]}")
        return SshWorkspace(self, PurePosixPath(root), shell)


class SshWorkspace(Workspace):
    def __init__(self, transport: SshTransport, root: PurePosixPath, shell: Shell) -> None:
        self._transport = transport
        self.root = root
        self.python = transport.host.python
        self._shell = shell
        self._closed = False

    def push(self, files: Mapping[str, Path]) -> None:
        t = self._transport
        channel = t.channel()
        progressed, finished = threading.Event(), threading.Event()
        watchdog = threading.Thread(target=t.guard_progress, args=(progressed, finished), daemon=True)
        watchdog.start()
        try:
            channel.exec_command(self._shell.command(["tar", "-x", "-f", "-", "-C", str(self.root)]))
            with pack(files) as stream:
                while block := stream.read(1 << 18):
                    channel.sendall(block)
                    progressed.set()
            channel.shutdown_write()
            status = t.exit_status(channel)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            t.drop()
            raise TransportError(f"{t.name}: upload broke off: {exc or type(exc).__name__}") from exc
        finally:
            finished.set()
            channel.close()
        if status != 0:
            raise TransportError(f"{t.name}: tar could not unpack the upload (exit {status})")

    def run(self, argv: list[str], env: Mapping[str, str], timeout: float, on_line: LineSink) -> int:
        pending, status = b"", []
        # sshd starts each command in a session of its own: the shell's pid is the
        # process group of everything the packager starts, which close() can stop
        command = f"echo $$ > {self._shell.quote(str(self.root / PID_FILE))} && " \
                  + self._shell.command(argv, env, cwd=str(self.root))
        for chunk in self._transport.stream(command, timeout, status):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                on_line(line.decode("utf-8", "replace"))
        if pending:
            on_line(pending.decode("utf-8", "replace"))
        return status[0]

    def pull(self, relative: str, dest: Path) -> None:
        path = PurePosixPath(relative)
        command = self._shell.command(["tar", "-c", "-f", "-", "-C", str(self.root / path.parent), path.name])
        status: list[int] = []
        try:
            unpack_single_file(self._transport.stream(command, 3600, status), path.name, dest, MAX_PULL_BYTES)
        except ArchiveError as exc:
            raise TransportError(f"refusing what {self._transport.name} sent: {exc}") from None
        if status != [0]:
            raise TransportError(f"{self._transport.name}: {relative} could not be read")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pid_file = self._shell.quote(str(self.root / PID_FILE))
        stop = f"if [ -f {pid_file} ]; then kill -TERM -- -\"$(cat {pid_file})\" 2>/dev/null; fi; "
        try:
            self._transport.execute(stop + self._shell.command(["rm", "-rf", "--", str(self.root)]), timeout=60)
        except TransportError as exc:  # the host is gone; `hosts clean` finds it later
            log.warning("could not remove %s on %s: %s", self.root, self._transport.name, exc)

    def provenance(self) -> dict[str, Any]:
        return {"address": self._transport.host.address, "shell": self._shell.name, "emulated": False}
