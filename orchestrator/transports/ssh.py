"""SSH transport: a build host reached with OpenSSH, through paramiko.

Host keys are verified, never accepted blindly: against known_hosts or a key pinned in
hosts.yaml, and an unknown key is refused with its fingerprint and how to pin it. One
connection per host serves a whole run. Everything on the host is done by its own Python
running hostside.py (one portable implementation for sh, PowerShell and cmd.exe hosts,
whose dialect only has to quote one argv, see shells.py). Files are content-addressed:
the host keeps them by sha256, so only what it lacks crosses the link, raw over an exec
channel with a large window. Output is drained while commands run (stdout and stderr
together), so large output cannot deadlock. Keepalive alone
does not notice a peer that vanished from the network, so modelpack asks the server to
answer within a liveness timeout whenever a channel has been silent that long.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Collection, Iterator, Mapping

import paramiko

from ..inventory import Host
from ..runtime.checks import content_sha256
from . import hostside
from .base import CommandTimeout, HostStatus, LineSink, Transport, TransportError, Workspace, disk_problem
from .shells import DETECT_PROBE, DIALECTS, PosixShell, Shell, detect

log = logging.getLogger(__name__)
# paramiko's transport thread logs every failed handshake with a traceback at ERROR; the
# failure reaches the user once, as this module's one-line TransportError, so paramiko's
# own log is kept off the terminal
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

WINDOW = 1 << 27  # 128 MiB: paramiko's small default window caps throughput
PACKET = 1 << 15
MAX_PULL_BYTES = 16 << 30
CHUNK = 1 << 22
#: how long a host's benchmark lease may be held before another controller breaks it
LEASE_TTL = 900
#: writes a command's stdin with ``send``; may read the command's answers with ``read_line``
Feed = Callable[[Callable[[bytes | memoryview], None], Callable[[], str]], None]


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _prefer_aead(*args: Any, **kwargs: Any) -> paramiko.Transport:
    """A transport that offers AES-GCM first. paramiko prefers AES-CTR, whose separate
    HMAC costs a Python-level call per 32 KB packet; with GCM the cipher authenticates
    too, which measured 10-25 % faster uploads (scripts/bench-ssh). Every other cipher
    stays offered, in paramiko's order, for servers without GCM."""
    transport = paramiko.Transport(*args, **kwargs)
    options = transport.get_security_options()
    aead = [c for c in options.ciphers if c.endswith("-gcm@openssh.com")]
    options.ciphers = tuple(aead + [c for c in options.ciphers if c not in aead])
    return transport


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
        self._facts: dict[str, Any] | None = None
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
                    transport_factory=_prefer_aead,
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
                where = f"{settings['hostname']}:{settings['port']}"
                if isinstance(exc, paramiko.SSHException) and any(
                        sign in str(exc) for sign in ("banner", "No existing session")):
                    raise TransportError(f"{self.name}: {where} accepted the connection but sent no SSH greeting"
                                         f" within {self.connect_timeout:g} s") from None
                raise TransportError(f"{self.name}: cannot connect to {where}: {exc or type(exc).__name__}") from exc
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

    def stream(self, command: str, timeout: float, status: list[int], feed: Feed | None = None,
               combine: bool = True, errors: list[bytes] | None = None) -> Iterator[bytes]:
        """Run ``command`` and yield its output as it comes (stdout and stderr together
        unless ``combine`` is false, in which case stderr is appended to ``errors``); its
        exit code is appended to ``status`` at the end. ``feed`` writes the command's stdin
        first. Silence longer than the liveness timeout triggers a liveness check."""
        channel = self.channel()
        channel.set_combine_stderr(combine)
        deadline = time.monotonic() + timeout
        try:
            self._exec(channel, command)
            if feed is not None:
                self._feed(channel, feed)
            channel.settimeout(1.0)
            silent_since = time.monotonic()
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
            if errors is not None:
                while channel.recv_stderr_ready():
                    errors.append(channel.recv_stderr(1 << 16))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.drop()
            raise TransportError(f"{self.name}: connection lost: {exc or type(exc).__name__}") from exc
        finally:
            channel.close()

    def _exec(self, channel: paramiko.Channel, command: str) -> None:
        """Start ``command``. paramiko waits for the host to accept it with no time limit,
        so a host cut off just after the channel opened would hold it until TCP gives up;
        a watchdog drops the connection when the host stops answering, which ends the wait."""
        started = threading.Event()

        def guard() -> None:
            while not started.wait(self.liveness_timeout):
                if not self.alive():
                    self.drop()
                    return

        threading.Thread(target=guard, daemon=True, name=f"exec-watchdog-{self.name}").start()
        try:
            channel.exec_command(command)
        finally:
            started.set()

    def _feed(self, channel: paramiko.Channel, feed: Feed) -> None:
        """Write a command's stdin, then close it. A peer that vanished mid-upload leaves
        the sender blocked inside paramiko's socket write until TCP gives up (about 15
        minutes; no channel timeout reaches it), so a watchdog drops the connection when
        the upload stops moving and the host does not answer a liveness check."""
        progressed, finished = threading.Event(), threading.Event()

        def send(block: bytes | memoryview) -> None:
            # a memoryview: paramiko's sendall re-slices what is left after each packet,
            # which copies a bytes object every time (quadratic in the block size)
            channel.sendall(memoryview(block))
            progressed.set()

        def read_line() -> str:
            """One line of the command's output (short answers only: byte by byte, so
            nothing after the line is consumed)."""
            line = bytearray()
            while not line.endswith(b"\n"):
                try:
                    byte = channel.recv(1)
                except socket.timeout:
                    if not self.alive():
                        self.drop()
                        raise TransportError(f"{self.name}: the host stopped answering") from None
                    continue
                if not byte:
                    break
                line += byte
            return line.decode("utf-8", "replace").rstrip("\r\n")

        def guard() -> None:
            while not finished.wait(self.liveness_timeout):
                if progressed.is_set():
                    progressed.clear()
                elif not self.alive():
                    self.drop()
                    return

        watchdog = threading.Thread(target=guard, daemon=True, name=f"upload-watchdog-{self.name}")
        watchdog.start()
        try:
            feed(send, read_line)
            channel.shutdown_write()
        finally:
            finished.set()

    def execute(self, command: str, timeout: float) -> tuple[int, bytes]:
        status: list[int] = []
        output = b"".join(self.stream(command, timeout, status))
        return status[0], output

    # -- the host side (hostside.py) ---------------------------------------------------
    @property
    def python(self) -> str:
        """The interpreter that runs host-side operations: hosts.yaml's, else the usual
        name on the host's platform."""
        if "python" in self.host.model_fields_set or isinstance(self.shell(), PosixShell):
            return self.host.python
        return "python"

    def hostside_command(self, operation: str, program: str | None = None) -> str:
        return self.shell().command([self.python, "-c", program or HOSTSIDE_BOOT, operation])

    def call(self, operation: str, params: dict[str, Any], timeout: float = 120.0,
             payload: Feed | None = None, program: str | None = None) -> Any:
        """Run one host-side operation and return its answer; ``program`` is the host-side
        program that has it (hostside_program with a caller's operations added)."""
        line = json.dumps({"workdir": self.host.workdir, **params}).encode() + b"\n"

        def feed(send: Callable[[bytes | memoryview], None], read_line: Callable[[], str]) -> None:
            send(line)
            if payload is not None:
                payload(send, read_line)

        status: list[int] = []
        output = b"".join(self.stream(self.hostside_command(operation, program), timeout, status, feed))
        text = output.decode("utf-8", "replace")
        for row in reversed(text.splitlines()):
            if row.startswith(hostside.ERROR):
                raise TransportError(f"{self.name}: {operation} refused: {row[len(hostside.ERROR):]}")
            if row.startswith(hostside.RESULT) and status == [0]:
                return json.loads(row[len(hostside.RESULT):])
        tail = " | ".join(text.strip().splitlines()[-3:]) or "no output"
        raise TransportError(f"{self.name}: {operation} failed (exit {status[0] if status else '?'}): {tail}")

    def facts(self) -> dict[str, Any]:
        """The host's platform, Python and work directory (asked once per run)."""
        if self._facts is None:
            self._facts = self.call("facts", {}, timeout=60)
        return self._facts

    def forget_facts(self) -> None:
        """Ask again next time (after a bootstrap changed the environment)."""
        self._facts = None

    def packager_python(self) -> str:
        """The bootstrapped environment's interpreter when there is one, else the host's."""
        return self.facts().get("env_python") or self.python

    # -- Transport ---------------------------------------------------------------------
    def probe(self, environment: str) -> HostStatus:
        try:
            facts = self.facts()
            python = self.packager_python()
            code, output = self.execute(
                self.shell().command([python, "-c", "import sys, onnxruntime, numpy;"
                                      "print(sys.version.split()[0], onnxruntime.__version__, numpy.__version__)"]),
                timeout=60)
        except TransportError as exc:
            return HostStatus(False, str(exc))
        # the last line: engines may print warnings first (onnxruntime's DirectML under Wine)
        text = (output.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
        if code != 0:
            hint = "" if facts.get("env_hash") else "; run `modelpack hosts bootstrap " + self.name + "`"
            return HostStatus(False, f"{python} cannot import the engines: {text or f'exit {code}'}{hint}")
        problem = disk_problem(self.host, facts.get("free_bytes"), f"{facts['workdir']}")
        if problem:
            return HostStatus(False, problem)
        identity = facts.get("env_hash") or text  # the bootstrap hash pins every wheel
        emulation = self.emulation()
        return HostStatus(True, f"ssh {self.host.address} ({self.shell().name}, {facts['os']}/{facts['machine']}"
                                + (f" under {emulation}" if emulation else "") + f"), Python/onnxruntime/numpy {text}"
                                + (f", environment {facts['env_hash'][:12]}" if facts.get("env_hash") else ""),
                          emulated=emulation is not None,
                          facts={"environment_id": "ssh:" + hashlib.sha256(identity.encode()).hexdigest(),
                                 **({"emulation": emulation} if emulation else {})})

    def emulation(self) -> str | None:
        """The compatibility layer the host runs its binaries under ("wine 10.0"), as the
        host reports it (Wine's ntdll says so) or hosts.yaml declares it; None when native."""
        found = self.facts().get("wine")
        if found:
            return f"wine {found}"
        return self.host.emulation

    def open(self, environment: str, labels: Mapping[str, str], lifetime: float | None = None) -> "SshWorkspace":
        run = labels.get("org.modelpack.run", "")
        answer = self.call("open_workspace", {"prefix": run or "adhoc", "ttl": self.host.lease_ttl,
                                              "controller": socket.gethostname(), "run": run})
        return SshWorkspace(self, PurePosixPath(answer["root"]), lifetime)

    grants_benchmark_lease = True

    @property
    def machine(self) -> str:
        return f"ssh:{self.host.address}"

    @contextlib.contextmanager
    def benchmark_lease(self, holder: str) -> Iterator[None]:
        """The host's lease is a folder in its workdir that every controller using the
        host must make first (hostside ``bench_lease``); asked again every 30 s."""
        holder = f"{socket.gethostname()}:{os.getpid()}:{holder}"
        while not self.call("bench_lease", {"take": True, "holder": holder, "ttl": LEASE_TTL, "wait": 30},
                            timeout=60)["held"]:
            pass
        try:
            yield
        finally:
            try:
                self.call("bench_lease", {"take": False, "holder": holder})
            except TransportError as exc:  # the build goes on; others wait until the lease expires
                log.warning("%s: could not give back the benchmark lease (it expires within %d s): %s",
                            self.name, LEASE_TTL, exc)

    @contextlib.contextmanager
    def others_paused(self, mine: Collection[Workspace]) -> Iterator[int]:
        """Stop the packagers that other controllers run on this host (hostside
        ``freeze_foreign``: every supervisor recorded in the workdir outside ``mine``)."""
        roots = [str(w.root) for w in mine if isinstance(w, SshWorkspace)]
        try:
            frozen = self.call("freeze_foreign", {"mine": roots}, timeout=60)["frozen"]
        except TransportError as exc:
            log.warning("%s: could not pause other controllers' jobs: %s", self.name, exc)
            frozen = 0
        try:
            yield frozen
        finally:
            try:
                self.call("thaw", {}, timeout=60)
            except TransportError as exc:  # giving back the lease, or breaking it, resumes them
                log.warning("%s: could not resume other controllers' jobs: %s", self.name, exc)

    def reap(self) -> list[str]:
        """Workspaces whose lease expired (a crashed run's, or one kept with --keep)."""
        answer = self.call("clean", {"blob_ttl": self.host.blob_ttl})
        return [f"{self.host.workdir or '~/.modelpack'}/{name}" for name in answer["removed"]]


def hostside_program(*extra: Path) -> str:
    """``python -c`` text that runs hostside.py or, given ``extra`` modules (written to
    run in its namespace, e.g. bootstrap's), only their public functions as operations,
    with just the parts of hostside.py they use. Docstrings and relative imports are
    dropped and the rest is compressed to stay well under cmd.exe's 8191-character
    command line; base64 survives every shell dialect."""
    tree = ast.parse(Path(hostside.__file__).read_text(encoding="utf-8"))
    start = [node for node in tree.body if isinstance(node, ast.If)
             and "__main__" in ast.unparse(node.test)]  # main() runs after every operation is defined
    tree.body = [node for node in tree.body if node not in start]
    if extra:
        table = next(node for node in tree.body if isinstance(node, ast.Assign)
                     and any(isinstance(t, ast.Name) and t.id == "OPERATIONS" for t in node.targets))
        tree.body[tree.body.index(table)] = ast.parse("OPERATIONS = {}").body[0]
    for module in extra:
        added = ast.parse(module.read_text(encoding="utf-8"))
        tree.body += [node for node in added.body if not (isinstance(node, ast.ImportFrom) and node.level)]
        names = [node.name for node in added.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]
        tree.body += ast.parse(f"OPERATIONS.update({{{', '.join(f'{n!r}: {n}' for n in names)}}})").body
    tree.body += start
    _drop_unused_definitions(tree)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    source = zlib.compress(ast.unparse(tree).encode(), 9)
    return f"import base64,zlib;exec(zlib.decompress(base64.b64decode('{base64.b64encode(source).decode()}')))"



def _drop_unused_definitions(tree: ast.Module) -> None:
    """Remove the module's functions and classes that nothing left in it can call: what
    its top-level statements (the operations table, main's call) name, and so on."""
    defined = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    wanted = [n.id for node in tree.body if node.__class__ not in (ast.FunctionDef, ast.ClassDef)
              for n in ast.walk(node) if isinstance(n, ast.Name)]
    kept: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in defined and name not in kept:
            kept.add(name)
            wanted += [n.id for n in ast.walk(defined[name]) if isinstance(n, ast.Name)]
    tree.body = [node for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.ClassDef))
                 or node.name in kept]

HOSTSIDE_BOOT = hostside_program()


class SshWorkspace(Workspace):
    def __init__(self, transport: SshTransport, root: PurePosixPath, lifetime: float | None = None) -> None:
        self._transport = transport
        self.root = root
        #: when the host stops what runs here by itself (a controller that died cannot)
        self._deadline = time.monotonic() + lifetime if lifetime else None
        self.python = transport.packager_python()
        self._closed = False
        #: bytes actually sent by push(): what the host did not hold already
        self.sent_bytes = 0
        #: the supervisor's own account of its process group (its first line), kept here
        #: so that job code on the host cannot choose what ``close`` stops
        self._group: dict[str, Any] | None = None

    def push(self, files: Mapping[str, Path]) -> None:
        """Send only what the host lacks: files are stored there by sha256 and linked into
        the workspace, so an unchanged model or packager crosses the link once. One
        exchange: the host answers with what it is missing (and how much of each a broken
        earlier upload left), then the rest of those files follows."""
        t = self._transport
        names = {name: content_sha256(path) for name, path in files.items()}
        local = {sha: files[name] for name, sha in names.items()}
        sizes = {sha: path.stat().st_size for sha, path in local.items()}

        def payload(send: Callable[[bytes | memoryview], None], read_line: Callable[[], str]) -> None:
            answer = read_line()
            if not answer.startswith(hostside.RESULT):
                raise TransportError(f"{t.name}: push refused: {answer.removeprefix(hostside.ERROR)[-300:]}")
            wanted = json.loads(answer[len(hostside.RESULT):])
            buffer = bytearray(CHUNK)  # reused: a fresh 4 MiB object per read costs page faults
            view = memoryview(buffer)
            for sha in wanted["missing"]:
                offset = wanted["offsets"].get(sha, 0)  # a broken earlier upload left this much
                with open(local[sha], "rb") as data:
                    data.seek(offset)
                    while count := data.readinto(buffer):
                        send(view[:count])
                        self.sent_bytes += count

        try:
            t.call("push", {"root": str(self.root), "files": names, "sizes": sizes}, timeout=3600, payload=payload)
        except TransportError as exc:
            raise TransportError(f"upload broke off: {exc}") from None

    def run(self, argv: list[str], env: Mapping[str, str], timeout: float, on_line: LineSink) -> int:
        t = self._transport
        lifetime = max(1.0, self._deadline - time.monotonic()) if self._deadline else None
        line = json.dumps({"workdir": t.host.workdir, "root": str(self.root), "argv": argv, "env": dict(env),
                           "lifetime": lifetime})
        pending, status = b"", []
        awaiting_group = True  # each supervisor's first line names its process group
        feed: Feed = lambda send, read_line: send(line.encode() + b"\n")  # noqa: E731
        for chunk in t.stream(t.hostside_command("supervise"), timeout, status, feed):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                text = raw.decode("utf-8", "replace").rstrip("\r")
                if awaiting_group and text.startswith(hostside.RESULT):
                    self._group, awaiting_group = json.loads(text[len(hostside.RESULT):]), False
                    continue
                awaiting_group = False
                on_line(text)
        if pending:
            on_line(pending.decode("utf-8", "replace"))
        return status[0]

    def pull(self, relative: str, dest: Path, max_bytes: int) -> None:
        """Copy one file back, raw; what a host sends is bounded in size here and checked
        against the packager's sha256 by the caller."""
        t = self._transport
        line = json.dumps({"workdir": t.host.workdir, "root": str(self.root), "name": relative}).encode() + b"\n"
        status: list[int] = []
        errors: list[bytes] = []
        total = 0
        with open(dest, "xb") as out:
            for chunk in t.stream(t.hostside_command("send"), 3600, status, lambda send, read_line: send(line),
                                  combine=False, errors=errors):
                total += len(chunk)
                if total > min(max_bytes, MAX_PULL_BYTES):
                    dest.unlink(missing_ok=True)
                    raise TransportError(f"refusing what {t.name} sent: {relative} exceeds"
                                         f" {min(max_bytes, MAX_PULL_BYTES)} bytes")
                out.write(chunk)
        if status != [0]:
            dest.unlink(missing_ok=True)
            why = b"".join(errors).decode("utf-8", "replace").strip().removeprefix(hostside.ERROR)
            raise TransportError(f"{t.name}: {relative} could not be read: {why[-300:] or status}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        keep = self._transport.keep_workspaces
        try:
            self._transport.call("close", {"root": str(self.root), "keep": keep, "group": self._group,
                                           "ttl": self._transport.host.lease_ttl})
            if keep:
                log.warning("kept %s on %s (--keep); `modelpack hosts clean` removes it once its lease expires",
                            self.root, self._transport.name)
        except TransportError as exc:  # the host is gone; its lease lets `hosts clean` find it later
            log.warning("could not remove %s on %s: %s", self.root, self._transport.name, exc)

    def pause(self) -> bool:
        if self._group is None:
            return False
        try:
            return bool(self._transport.call("freeze", {"root": str(self.root), "group": self._group,
                                                       "on": True})["done"])
        except TransportError:
            return False

    def resume(self) -> None:
        if self._group is not None:
            with contextlib.suppress(TransportError):
                self._transport.call("freeze", {"root": str(self.root), "group": self._group, "on": False})

    def provenance(self) -> dict[str, Any]:
        t = self._transport
        facts = t.facts()
        emulation = t.emulation()
        return {"address": t.host.address, "shell": t.shell().name, "emulated": emulation is not None,
                **({"emulation": emulation} if emulation else {}),
                **({"pin_overrides": dict(t.host.pins)} if t.host.pins else {}),
                "host_os": facts.get("os"), "host_platform": facts.get("platform"),
                "environment_hash": facts.get("env_hash")}
