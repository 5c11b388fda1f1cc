"""The host side of the SSH transport: small operations run by the build host's Python.

Why Python and not shell commands: a build host already needs Python to run the
packager, and Python behaves the same on Linux, macOS and Windows, whereas ``mkdir -p``,
``tar``, ``kill`` and ``rm -rf`` each need a different spelling in sh, PowerShell and
cmd.exe. The controller sends this file's source on the command line (compressed and
base64-encoded, so it survives every shell dialect unchanged) with the operation's name;
the operation's parameters arrive as one JSON line on stdin, followed by any payload.
Its answer is one JSON line after :data:`RESULT`; a failure is one line after
:data:`ERROR` on stderr and exit code 3. Standard library only, Python 3.8 or later.

Layout of the host's work directory (``workdir`` in hosts.yaml, default ``~/.modelpack``)::

    blobs/<sha256>           files by content: a model already here is not sent again
    runs/<run>-<random>/     one job attempt's workspace, with a lease file
    pids/<run>-<random>.json the supervisor of that workspace (outside it: job code runs there)
    envs/<hash>/             environments made by ``modelpack hosts bootstrap`` (bootstrap/hostside_env.py)
    envs/current             the hash of the environment builds use
    benchmark.lease/         while a benchmark runs here: its holder and expiry (one at a time)
"""

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

RESULT = "MODELPACK-RESULT "
ERROR = "MODELPACK-ERROR "
LEASE = ".modelpack-lease"
ENV_MARKER = ".modelpack-env"
#: a workspace whose lease file never got written counts as expired after this long
UNLEASED_GRACE = 86400.0
WINDOWS = os.name == "nt"


class Refused(Exception):
    """A request this side will not carry out; the message goes back to the controller."""


def _workdir(params):
    return os.path.abspath(os.path.expanduser(params.get("workdir") or os.path.join("~", ".modelpack")))


def _inside(root, relative):
    """``root/relative`` for a relative, '..'-free name; anything else is refused."""
    parts = relative.replace("\\", "/").split("/")
    if not relative or relative.startswith("/") or ":" in relative or any(p in ("", ".", "..") for p in parts):
        raise Refused("unsafe path in request: %r" % relative)
    return os.path.join(root, *parts)


def _python(env_dir):
    """An environment's interpreter: a venv's, or on Windows the copy of an embeddable
    distribution that ``make_env`` makes where venv is missing."""
    if not WINDOWS:
        return os.path.join(env_dir, "bin", "python")
    embedded = os.path.join(env_dir, "python.exe")
    return embedded if os.path.isfile(embedded) else os.path.join(env_dir, "Scripts", "python.exe")


def _path_file():
    """The ``._pth`` file of an embeddable Windows distribution (it fixes sys.path, and
    the distribution has no venv or ensurepip), else None."""
    folder = os.path.dirname(os.path.abspath(sys.executable))
    found = sorted(name for name in os.listdir(folder) if name.endswith("._pth")) if WINDOWS else []
    return os.path.join(folder, found[0]) if found else None


def _wine_version():
    """Wine's version when this is Windows' Python running under Wine, else None: Wine's
    ntdll exports ``wine_get_version``, Windows' does not. (The runtime's platforms.py
    says the same for packages; this program is shipped alone, standard library only.)"""
    if not WINDOWS:
        return None
    import ctypes

    try:
        get = ctypes.WinDLL("ntdll").wine_get_version
    except (AttributeError, OSError):
        return None
    get.restype = ctypes.c_char_p
    return get().decode("ascii", "replace")


def facts(params, stdin):
    """What the controller needs to know before it builds here."""
    import platform
    import sysconfig

    work = _workdir(params)
    os.makedirs(work, exist_ok=True)
    env_hash, python = None, None
    try:
        with open(os.path.join(work, "envs", "current")) as current:
            candidate = current.read().strip()
        if os.path.isfile(os.path.join(work, "envs", candidate, ENV_MARKER)):
            env_hash, python = candidate, _python(os.path.join(work, "envs", candidate))
    except OSError:
        pass
    return {
        "os": platform.system().lower(), "machine": platform.machine().lower(),
        "os_version": platform.mac_ver()[0] or platform.release(),
        "python_version": "%d.%d" % sys.version_info[:2], "platform": sysconfig.get_platform(),
        "workdir": work.replace("\\", "/"), "free_bytes": shutil.disk_usage(work).free,
        "env_hash": env_hash, "env_python": python.replace("\\", "/") if python else None,
        "embeddable": _path_file() is not None, "wine": _wine_version(),
    }


def _lease(root, ttl, run=None, controller=None):
    now = time.time()
    with open(os.path.join(root, LEASE), "w") as out:
        json.dump({"created": now, "expires": now + float(ttl), "controller": controller, "run": run}, out)


def open_workspace(params, stdin):
    """A new run folder with its lease: when it expires, ``hosts clean`` may remove it."""
    runs = os.path.join(_workdir(params), "runs")
    os.makedirs(runs, exist_ok=True)
    root = tempfile.mkdtemp(prefix=params["prefix"] + "-", dir=runs)
    _lease(root, params["ttl"], params.get("run"), params.get("controller"))
    return {"root": root.replace("\\", "/")}


def _copy_verified(blob, sha, dest):
    """Copy ``blob`` to ``dest`` while hashing it; False (and neither kept) when the
    blob no longer matches its name. A copy, not a link: job code that writes to its
    inputs must not reach the shared blob, and checking on every use means a blob changed
    by anything else is never used."""
    digest = hashlib.sha256()
    try:
        with open(blob, "rb") as source, open(dest, "wb") as out:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
    except FileNotFoundError:
        return False
    if digest.hexdigest() == sha:
        return True
    os.remove(dest)
    os.remove(blob)
    return False


def _place(blobs, root, files):
    """Copy blobs into a workspace, each checked against its sha256; return the ones this
    host does not have (or had changed)."""
    missing = []
    for name, sha in sorted(files.items()):
        blob = _inside(blobs, sha)
        dest = _inside(root, name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):
            os.remove(dest)
        if not os.path.isfile(blob) or not _copy_verified(blob, sha, dest):
            missing.append(sha)
            continue
        os.utime(blob)  # recently used: `hosts clean` keeps it
    return sorted(set(missing))


def _claim_partial(blobs, sha, size):
    """Take over what a broken earlier upload of ``sha`` left (``<sha>.part``), if
    anything: renamed to a private name first, so two uploads never share it. Returns
    (private path or None, bytes already there)."""
    shared = _inside(blobs, sha + ".part")
    handle, private = tempfile.mkstemp(prefix=sha[:16] + ".", suffix=".resume", dir=blobs)
    os.close(handle)
    try:
        os.replace(shared, private)
    except OSError:  # nothing to resume (or another upload took it first)
        os.remove(private)
        return None, 0
    have = os.path.getsize(private)
    if have > size:
        os.remove(private)
        return None, 0
    return private, have


def _store(blobs, sha, size, stdin, partial=None):
    """Store one blob of ``size`` bytes, continuing ``partial`` if given, from stdin. It
    becomes visible under its name only once its content matches its sha256; if the
    stream ends early, what arrived is kept as ``<sha>.part`` for the next upload to
    resume. Reading, and hashing plus writing, run in two threads (all three release
    the GIL), so the check costs little throughput."""
    final = _inside(blobs, sha)
    digest = hashlib.sha256()
    if partial is None:
        handle, partial = tempfile.mkstemp(prefix=sha[:16] + ".", suffix=".upload", dir=blobs)
        os.close(handle)
    with open(partial, "rb") as already:
        for block in iter(lambda: already.read(1 << 20), b""):
            digest.update(block)
    remaining = size - os.path.getsize(partial)
    blocks = queue.Queue(maxsize=8)
    failed = []

    def hash_and_write():
        with open(partial, "ab") as out:
            for block in iter(blocks.get, None):
                if not failed:
                    try:
                        digest.update(block)
                        out.write(block)
                    except OSError as exc:  # a full disk: keep draining, report after
                        failed.append(exc)

    writer = threading.Thread(target=hash_and_write)
    writer.start()
    ended_early = False
    try:
        try:
            while remaining:
                block = stdin.read(min(remaining, 1 << 20))
                if not block:
                    ended_early = True
                    raise Refused("upload ended early: %d bytes of %s missing" % (remaining, sha))
                blocks.put(block)
                remaining -= len(block)
        finally:
            blocks.put(None)
            writer.join()
        if failed:
            raise failed[0]
        if digest.hexdigest() != sha:
            raise Refused("upload corrupted: content of %s does not match its sha256" % sha)
        os.replace(partial, final)
    finally:
        if os.path.exists(partial):
            if ended_early and not failed:
                os.replace(partial, _inside(blobs, sha + ".part"))
            else:
                os.remove(partial)


def push(params, stdin):
    """Put files into a workspace, in one exchange: place what the host already holds,
    answer with what it lacks (and how much of each a broken earlier upload left, to
    resume from there), then store those blobs as they arrive, in the order of that
    answer, and place them too."""
    blobs = os.path.join(_workdir(params), "blobs")
    os.makedirs(blobs, exist_ok=True)
    missing = _place(blobs, params["root"], params["files"])
    partials = {sha: _claim_partial(blobs, sha, int(params["sizes"][sha])) for sha in missing}
    offsets = {sha: have for sha, (_, have) in partials.items() if have}
    sys.stdout.write(RESULT + json.dumps({"missing": missing, "offsets": offsets}) + "\n")
    sys.stdout.flush()
    try:
        for sha in missing:
            _store(blobs, sha, int(params["sizes"][sha]), stdin, partials.pop(sha)[0])
    finally:
        for sha, (private, _) in partials.items():  # not reached: give the claimed parts back
            if private:
                os.replace(private, _inside(blobs, sha + ".part"))
    if missing:
        still = _place(blobs, params["root"], params["files"])
        if still:
            raise Refused("blobs still missing after upload: %s" % ", ".join(still))
    return {"received": len(missing), "resumed_bytes": sum(offsets.values())}


def send(params, stdin):
    """Write one regular file of a workspace to stdout, raw; the controller checks it."""
    path = _inside(params["root"], params["name"])
    if os.path.islink(path) or not os.path.isfile(path):
        raise Refused("%s is not a regular file" % params["name"])
    out = sys.stdout.buffer
    with open(path, "rb") as data:
        shutil.copyfileobj(data, out, 1 << 20)
    out.flush()
    return None


def group_file(work, root):
    """Where a supervisor records itself: outside the workspace, whose job code must not
    choose which processes ``close`` or ``clean`` stop."""
    return os.path.join(work, "pids", os.path.basename(os.path.abspath(root)) + ".json")


def _start_time(pid):
    """What tells a process apart from a later one given the same pid (Linux: its start
    time in clock ticks); None where the system does not say."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def record_group(work, root, pid):
    """Record, where ``freeze_foreign``, ``close`` and ``clean`` look, that process group
    ``pid`` runs the packager of workspace ``root``; returns the record. Also used by the
    local transport, whose controllers share one such folder."""
    group = {"pid": pid, "started": _start_time(pid), "root": root}
    os.makedirs(os.path.join(work, "pids"), exist_ok=True)
    with open(group_file(work, root), "w") as out:
        json.dump(group, out)
    return group


def supervise(params, stdin):
    """Run the packager in the workspace. Its first line names the process group to stop
    on cancel, which the controller keeps; a copy goes outside the workspace for ``clean``.

    On POSIX this process leads a process group of its own, so stopping the group stops
    the packager and everything it started; on Windows it joins a job object named after
    the workspace, which everything it starts joins too."""
    root = os.path.abspath(params["root"])
    if WINDOWS:
        _join_job(root)
    elif os.getpgid(0) != os.getpid():
        os.setsid()
    group = record_group(_workdir(params), root, os.getpid())
    os.chdir(root)  # lets _ours() see that a process belongs to this workspace
    env = dict(os.environ)
    env.update(params.get("env") or {})
    if params.get("lifetime"):  # a controller killed outright cannot stop us: end by ourselves
        timer = threading.Timer(float(params["lifetime"]), _end_own_group, args=(root,))
        timer.daemon = True
        timer.start()
    sys.stdout.write(RESULT + json.dumps(group) + "\n")
    sys.stdout.flush()
    code = subprocess.call(params["argv"], cwd=root, env=env, stdin=subprocess.DEVNULL)
    sys.exit(code)


def _end_own_group(root):
    """The workspace's lifetime has passed: stop the packager and everything it started
    (this supervisor leads their process group; on Windows, the workspace's job object)."""
    if WINDOWS:
        _terminate_job(root)
    else:
        os.killpg(os.getpid(), signal.SIGKILL)


def _job_name(root):
    """The Windows job object of a workspace's supervisor and every process it starts.
    ``taskkill /T`` misses processes whose parent has exited (and Wine's has no /T); a
    job holds them all. Named after the workspace, so a stop reaches only its processes."""
    return "modelpack-" + hashlib.sha256(os.path.normcase(os.path.abspath(root)).encode()).hexdigest()[:32]


def _kernel32():
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateJobObjectW.restype = kernel32.OpenJobObjectW.restype = wintypes.HANDLE
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    kernel32.CreateJobObjectW.argtypes = [ctypes.c_void_p, wintypes.LPCWSTR]
    kernel32.OpenJobObjectW.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.LPCWSTR]
    kernel32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
    kernel32.TerminateJobObject.argtypes = [wintypes.HANDLE, wintypes.UINT]
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    return kernel32


def _join_job(root):
    """Put this process, and so everything it starts, in the workspace's job object. The
    handle is never closed: a named job lives while a handle to it does."""
    kernel32 = _kernel32()
    job = kernel32.CreateJobObjectW(None, _job_name(root))
    if not job or not kernel32.AssignProcessToJobObject(job, kernel32.GetCurrentProcess()):
        import ctypes

        raise OSError("cannot make the job object of %s (error %d)" % (root, ctypes.get_last_error()))


def _terminate_job(root):
    """Stop every process of a workspace's job object; False when there is none."""
    kernel32 = _kernel32()
    job = kernel32.OpenJobObjectW(0x0008, False, _job_name(root))  # JOB_OBJECT_TERMINATE
    if not job:
        return False
    try:
        return bool(kernel32.TerminateJobObject(job, 1))
    finally:
        kernel32.CloseHandle(job)


def _ours(group, root):
    """Whether ``group`` is a live supervisor this side started for ``root``: the record
    names this workspace, the pid leads its own process group, and where the system says,
    it started when recorded and works in the workspace. Anything else is not signalled."""
    try:
        pid = int(group["pid"])
        if pid <= 1 or pid == os.getpid() or os.path.abspath(group["root"]) != os.path.abspath(root):
            return False
        if WINDOWS:
            return True
        if os.getpgid(pid) != pid:
            return False
        started = _start_time(pid)
        if started is None:
            return not os.path.isdir("/proc/self")
        return started == group["started"] and \
            os.path.realpath(os.readlink("/proc/%d/cwd" % pid)) == os.path.realpath(root)
    except (OSError, KeyError, TypeError, ValueError):
        return False


def _stop(work, root, group=None):
    """Stop the supervisor of ``root`` and its group: the one the controller names, else
    the one recorded outside the workspace, and only if it proves to be ours."""
    record = group_file(work, root)
    candidates = [group] if group else []
    try:
        with open(record) as data:
            candidates.append(json.load(data))
    except (OSError, ValueError):
        pass
    try:
        chosen = next((g for g in candidates if _ours(g, root)), None)
        if chosen is not None:
            _kill_group(chosen)
    finally:
        if os.path.exists(record):
            os.remove(record)


def _kill_group(group):
    if WINDOWS:
        _terminate_job(group["root"])
        return
    pid = int(group["pid"])
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pid, sig)
        except OSError:  # already gone
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(pid, 0)
            except OSError:
                return
            time.sleep(0.1)


def freeze(params, stdin):
    """Pause (``on``) or resume a workspace's packager while another one on this host
    benchmarks, only if it proves to be ours: SIGSTOP or SIGCONT to its process group;
    on Windows, every process of the workspace's job object suspended or resumed."""
    group = params.get("group")
    return {"done": bool(group) and _pause_if_ours(group, params["root"], bool(params["on"]))}


def _pause_if_ours(group, root, on):
    """Pause (``on``) or resume a supervisor and everything it started, only if it proves
    to be ours for ``root``."""
    if not _ours(group, root):
        return False
    if WINDOWS:
        return _suspend_job(root, on)
    os.killpg(int(group["pid"]), signal.SIGSTOP if on else signal.SIGCONT)  # looked up on POSIX only
    return True


def _suspend_job(root, on):
    """Suspend (``on``) or resume every process in a workspace's job object, the way
    Windows' own tools (Resource Monitor, Process Explorer) do: ``NtSuspendProcess``
    stops every thread of a process, ``NtResumeProcess`` undoes it. Windows has no
    SIGSTOP, and the job, named after the workspace, holds exactly its processes. False
    when there is no such job or none of its processes could be reached."""
    import ctypes
    from ctypes import wintypes

    kernel32 = _kernel32()
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.QueryInformationJobObject.argtypes = [wintypes.HANDLE, ctypes.c_int, ctypes.c_void_p,
                                                   wintypes.DWORD, ctypes.c_void_p]
    ntdll = ctypes.WinDLL("ntdll")
    step = ntdll.NtSuspendProcess if on else ntdll.NtResumeProcess
    step.argtypes = [wintypes.HANDLE]

    class ProcessIds(ctypes.Structure):  # JOBOBJECT_BASIC_PROCESS_ID_LIST
        _fields_ = [("assigned", wintypes.DWORD), ("listed", wintypes.DWORD), ("ids", ctypes.c_size_t * 4096)]

    job = kernel32.OpenJobObjectW(0x0004, False, _job_name(root))  # JOB_OBJECT_QUERY
    if not job:
        return False
    try:
        ids = ProcessIds()
        if not kernel32.QueryInformationJobObject(job, 3, ctypes.byref(ids), ctypes.sizeof(ids), None):
            return False  # 3: JobObjectBasicProcessIdList
        done = False
        for pid in ids.ids[:ids.listed]:
            if pid == os.getpid():
                continue
            process = kernel32.OpenProcess(0x0800, False, pid)  # PROCESS_SUSPEND_RESUME
            if process:
                try:
                    done = step(process) == 0 or done
                finally:
                    kernel32.CloseHandle(process)
        return done
    finally:
        kernel32.CloseHandle(job)


def _frozen_file(work):
    return os.path.join(work, "benchmark.lease", "frozen.json")


def _thaw_recorded(work):
    """Resume what a lease holder froze of other controllers' packagers (recorded in the
    lease folder): on release, and when an expired lease is broken."""
    try:
        with open(_frozen_file(work)) as data:
            groups = json.load(data)
    except (OSError, ValueError):
        return
    for group in groups:
        _pause_if_ours(group, group.get("root", ""), False)


def freeze_foreign(params, stdin):
    """While the caller holds this host's benchmark lease: pause every packager on this
    host whose workspace is not one of ``mine`` (other controllers' jobs, found by the
    records supervisors leave in the workdir) and that proves to be ours; recorded in the
    lease folder, so that ``thaw`` and whoever breaks an expired lease resume them.
    Records a killed controller left (workspace removed, packager gone) are dropped here,
    where every lease holder reads them."""
    work = _workdir(params)
    mine = {os.path.abspath(root) for root in params["mine"]}
    records = os.path.join(work, "pids")
    frozen = []
    for name in sorted(os.listdir(records)) if os.path.isdir(records) else []:
        record = os.path.join(records, name)
        try:
            with open(record) as data:
                group = json.load(data)
        except (OSError, ValueError):
            continue
        root = str(group.get("root", ""))
        if not os.path.isdir(root) and not _ours(group, root):
            _drop_stale(record)  # a killed controller's: its workspace and its packager are gone
        elif os.path.abspath(root) not in mine and _pause_if_ours(group, root, True):
            frozen.append(group)
    with open(_frozen_file(work), "w") as out:
        json.dump(frozen, out)
    return {"frozen": len(frozen)}


def _drop_stale(record):
    try:
        os.remove(record)
    except OSError:  # another lease holder dropped it first
        pass


def thaw(params, stdin):
    """Resume what ``freeze_foreign`` stopped."""
    work = _workdir(params)
    _thaw_recorded(work)
    if os.path.exists(_frozen_file(work)):
        os.remove(_frozen_file(work))
    return {"done": True}


def bench_lease(params, stdin):
    """Take (``take``, waiting up to ``wait`` s) or give back this host's benchmark lease:
    a folder made atomically in the workdir that names its holder and expiry, whichever
    controller asks; an expired one is broken."""
    path = os.path.join(_workdir(params), "benchmark.lease")
    record = os.path.join(path, "holder.json")
    if not params["take"]:
        try:
            with open(record) as data:
                holder = json.load(data)["holder"]
        except (OSError, ValueError, KeyError, TypeError):
            return {"held": False}  # not held, or not readable: nothing of ours to give back
        if holder == params["holder"]:
            # after the record is closed: Windows refuses to delete a file still open
            _thaw_recorded(_workdir(params))
            _remove(path)
        return {"held": False}
    deadline = time.time() + float(params["wait"])
    while True:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path)
            with open(record, "w") as out:
                json.dump({"holder": params["holder"], "expires": time.time() + float(params["ttl"])}, out)
            return {"held": True}
        except FileExistsError:
            try:
                with open(record) as data:
                    expires = float(json.load(data)["expires"])
            except (OSError, ValueError, KeyError):
                expires = os.path.getmtime(path) + 60  # being written, or its writer died
            if expires < time.time():
                _thaw_recorded(_workdir(params))
                _remove(path)
                continue
        if time.time() > deadline:
            return {"held": False}
        time.sleep(0.2)


def _remove(path):
    def retry(function, target, excinfo):  # read-only files on Windows
        os.chmod(target, 0o700)
        function(target)

    shutil.rmtree(path, onerror=retry)


def close(params, stdin):
    """Stop what still runs in a workspace, and remove it unless asked to keep it; a
    kept one is leased for ``ttl`` seconds from now."""
    root = params["root"]
    runs = os.path.join(_workdir(params), "runs")
    if os.path.dirname(os.path.abspath(root)) != os.path.abspath(runs):
        raise Refused("%s is not a workspace under %s" % (root, runs))
    _stop(_workdir(params), root, params.get("group"))
    if params.get("keep"):
        _lease(root, params["ttl"], "kept")
    elif os.path.isdir(root):
        _remove(root)
    return {"removed": not params.get("keep")}


def clean(params, stdin):
    """Remove workspaces whose lease expired, and blobs unused for ``blob_ttl`` seconds."""
    work = _workdir(params)
    now = time.time()
    removed = []
    runs = os.path.join(work, "runs")
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        root = os.path.join(runs, name)
        try:
            with open(os.path.join(root, LEASE)) as data:
                expires = float(json.load(data)["expires"])
        except (OSError, ValueError, KeyError, TypeError):
            expires = os.path.getmtime(root) + UNLEASED_GRACE
        if expires <= now:
            _stop(work, root)
            _remove(root)
            removed.append("runs/" + name)
    blobs = os.path.join(work, "blobs")
    blob_ttl = params.get("blob_ttl")
    for name in sorted(os.listdir(blobs)) if blob_ttl is not None and os.path.isdir(blobs) else []:
        path = os.path.join(blobs, name)
        if os.path.getmtime(path) + float(blob_ttl) <= now:
            os.remove(path)
            removed.append("blobs/" + name)
    return {"removed": removed}


OPERATIONS = {f.__name__: f for f in (facts, open_workspace, push, send, supervise, close, clean, freeze,
                                       freeze_foreign, thaw, bench_lease)}


def main(argv):
    stdin = sys.stdin.buffer
    try:
        params = json.loads(stdin.readline().decode("utf-8"))
        result = OPERATIONS[argv[1]](params, stdin)
    except (Refused, OSError, KeyError, ValueError) as exc:
        sys.stderr.write(ERROR + ("%s: %s" % (type(exc).__name__, exc)).replace("\n", " ") + "\n")
        sys.stderr.flush()
        sys.exit(3)
    if result is not None:
        sys.stdout.write("\n" + RESULT + json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)
