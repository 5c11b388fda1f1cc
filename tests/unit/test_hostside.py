"""The host side of the SSH transport (hostside.py), run here exactly as an SSH host runs
it: the boot text through a real sh, parameters as a JSON line on stdin. Plus the command
lines a Windows host would receive, checked against the PowerShell and cmd.exe models."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.inventory import Host
from orchestrator.transports import hostside
from orchestrator.transports.shells import PosixShell
from orchestrator.transports.ssh import HOSTSIDE_BOOT, SshTransport
from tests.unit.test_shells import cmd_phase, msvcrt_split, ps_parse_verbatim


def call(work: Path, operation: str, params: dict, payload: bytes = b"", **popen) -> subprocess.CompletedProcess:
    line = PosixShell().command([sys.executable, "-c", HOSTSIDE_BOOT, operation])
    request = json.dumps({"workdir": str(work), **params}).encode() + b"\n" + payload
    return subprocess.run(["sh", "-c", line], input=request, capture_output=True, timeout=60, **popen)


def answer(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout.decode().rsplit(hostside.RESULT, 1)[1])


def refusal(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 3, done
    return done.stderr.decode()


def workspace(work: Path, ttl: float = 3600) -> Path:
    return Path(answer(call(work, "open_workspace", {"prefix": "run", "ttl": ttl, "run": "r1"}))["root"])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def push(work: Path, root: Path, files: dict[str, bytes], send: list[bytes] | None = None) -> subprocess.CompletedProcess:
    """The push exchange; ``send`` defaults to every file's bytes, ordered by sha256 as the
    host asks for them."""
    names = {name: sha(data) for name, data in files.items()}
    sizes = {sha(data): len(data) for data in files.values()}
    payload = send if send is not None else [files[n] for n in sorted(files, key=lambda n: names[n])]
    return call(work, "push", {"root": str(root), "files": names, "sizes": sizes}, b"".join(payload))


def asked_for(done: subprocess.CompletedProcess) -> list[str]:
    first = done.stdout.decode().split(hostside.RESULT)[1]
    return json.loads(first.splitlines()[0])["missing"]


def test_blobs_are_sent_once_and_linked_into_each_workspace(tmp_path):
    model, code = os.urandom(3000), b"print('packager')\n"
    files = {"in/model.onnx": model, "orchestrator/x.py": code}
    first = workspace(tmp_path)
    done = push(tmp_path, first, files)
    assert sorted(asked_for(done)) == sorted([sha(model), sha(code)])
    assert answer(done) == {"received": 2, "resumed_bytes": 0}
    assert (first / "in" / "model.onnx").read_bytes() == model and (first / "orchestrator" / "x.py").read_bytes() == code
    second = workspace(tmp_path)
    done = push(tmp_path, second, files, send=[])
    assert asked_for(done) == [] and answer(done) == {"received": 0, "resumed_bytes": 0}
    assert (second / "in" / "model.onnx").read_bytes() == model


def test_a_corrupted_or_short_upload_never_becomes_a_blob(tmp_path):
    root = workspace(tmp_path)
    data = b"real model bytes"
    files = {"in/model.onnx": data}
    assert "does not match its sha256" in refusal(push(tmp_path, root, files, send=[b"fake model bytes"]))
    assert list((tmp_path / "blobs").iterdir()) == [], "a corrupt upload leaves nothing behind"
    assert "ended early" in refusal(push(tmp_path, root, files, send=[b"real"]))
    assert [p.name for p in (tmp_path / "blobs").iterdir()] == [sha(data) + ".part"], "only a resumable part"
    assert not (root / "in" / "model.onnx").exists()


def test_a_broken_upload_resumes_where_it_stopped(tmp_path):
    root = workspace(tmp_path)
    data = os.urandom(3000)
    files = {"in/model.onnx": data}
    assert "ended early" in refusal(push(tmp_path, root, files, send=[data[:1000]]))
    done = push(tmp_path, root, files, send=[data[1000:]])
    first = json.loads(done.stdout.decode().split(hostside.RESULT)[1].splitlines()[0])
    assert first == {"missing": [sha(data)], "offsets": {sha(data): 1000}}
    assert answer(done) == {"received": 1, "resumed_bytes": 1000}
    assert (root / "in" / "model.onnx").read_bytes() == data
    assert [p.name for p in (tmp_path / "blobs").iterdir()] == [sha(data)], "no partial files left"


def test_a_part_that_does_not_add_up_is_dropped_and_the_next_upload_starts_over(tmp_path):
    root = workspace(tmp_path)
    data = os.urandom(3000)
    files = {"in/model.onnx": data}
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / (sha(data) + ".part")).write_bytes(b"x" * 1000)  # not the file's first bytes
    assert "does not match its sha256" in refusal(push(tmp_path, root, files, send=[data[1000:]]))
    assert list((tmp_path / "blobs").iterdir()) == []
    done = push(tmp_path, root, files)
    assert answer(done) == {"received": 1, "resumed_bytes": 0}
    assert (root / "in" / "model.onnx").read_bytes() == data


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "in/../../x", "C:/Windows/x", "in//x"])
def test_names_leaving_the_workspace_are_refused(tmp_path, name):
    root = workspace(tmp_path)
    answer(push(tmp_path, root, {"ok": b"x"}))
    assert "unsafe path" in refusal(push(tmp_path, root, {name: b"x"}, send=[]))
    assert "unsafe path" in refusal(call(tmp_path, "send", {"root": str(root), "name": name}))


def test_send_gives_back_regular_files_only(tmp_path):
    root = workspace(tmp_path)
    (root / "out").mkdir()
    (root / "out" / "pkg.tar.gz").write_bytes(b"\x00\x01package\n\r\n")
    os.symlink("/etc/passwd", root / "out" / "link")
    done = call(tmp_path, "send", {"root": str(root), "name": "out/pkg.tar.gz"})
    assert done.returncode == 0 and done.stdout == b"\x00\x01package\n\r\n"
    assert "not a regular file" in refusal(call(tmp_path, "send", {"root": str(root), "name": "out/link"}))


def test_supervise_passes_argv_and_environment_exactly_and_keeps_the_exit_code(tmp_path):
    root = workspace(tmp_path)
    nasty = "it's \"q\" $HOME `id` ; %PATH% & | > \n é ✓"
    done = call(tmp_path, "supervise", {"root": str(root), "env": {"V": nasty},
                                         "argv": [sys.executable, "-c", "import os, sys; sys.stdout.write("
                                                  "repr((sys.argv[1], os.environ['V'], os.getcwd()))); sys.exit(7)",
                                                  nasty]})
    assert done.returncode == 7
    named, output = done.stdout.decode().split("\n", 1)
    assert json.loads(named.removeprefix(hostside.RESULT))["root"] == str(root)
    assert output == repr((nasty, nasty, str(root)))


def test_close_stops_the_whole_process_group_and_removes_the_workspace(tmp_path):
    root = workspace(tmp_path)
    script = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);" \
             " print('started', flush=True); time = __import__('time'); time.sleep(120)"
    runner = _run_supervised(tmp_path, root, script)
    named = json.loads(runner.stdout.readline().decode().removeprefix(hostside.RESULT))
    assert runner.stdout.readline() == b"started\n"
    group = named["pid"]
    started = time.monotonic()
    assert answer(call(tmp_path, "close", {"root": str(root), "group": named})) == {"removed": True}
    assert runner.wait(timeout=15) != 0 and time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not root.exists()


def test_close_keeps_on_request_and_refuses_paths_outside_the_runs_folder(tmp_path):
    root = workspace(tmp_path)
    assert answer(call(tmp_path, "close", {"root": str(root), "keep": True, "ttl": 60})) == {"removed": False}
    assert root.is_dir()
    lease = json.loads((root / hostside.LEASE).read_text())
    assert abs(lease["expires"] - (time.time() + 60)) < 10, "kept for ttl seconds from the end of the run"
    outside = tmp_path / "precious"
    outside.mkdir()
    assert "not a workspace" in refusal(call(tmp_path, "close", {"root": str(outside)}))
    assert "not a workspace" in refusal(call(tmp_path, "close", {"root": str(tmp_path / "runs")}))
    assert outside.is_dir()


def test_clean_removes_expired_leases_and_stale_blobs_only(tmp_path):
    expired, live = workspace(tmp_path, ttl=0.01), workspace(tmp_path, ttl=3600)
    data, fresh = b"old blob", b"fresh blob"
    answer(push(tmp_path, live, {"m": data, "n": fresh}))
    old = time.time() - 30 * 86400
    os.utime(tmp_path / "blobs" / sha(data), (old, old))
    time.sleep(0.05)
    removed = answer(call(tmp_path, "clean", {"blob_ttl": 14 * 86400}))["removed"]
    assert sorted(removed) == sorted([f"runs/{expired.name}", f"blobs/{sha(data)}"])
    assert live.is_dir() and (tmp_path / "blobs" / sha(fresh)).is_file()


def test_facts_name_the_bootstrapped_environment_only_when_it_is_complete(tmp_path):
    facts = answer(call(tmp_path, "facts", {}))
    assert facts["os"] == sys.platform.rstrip("0123456789") and facts["env_hash"] is None
    env = tmp_path / "envs" / "abc"
    env.mkdir(parents=True)
    (tmp_path / "envs" / "current").write_text("abc")
    assert answer(call(tmp_path, "facts", {}))["env_hash"] is None, "half-made environments are not used"
    (env / hostside.ENV_MARKER).write_text("{}")
    facts = answer(call(tmp_path, "facts", {}))
    assert facts["env_hash"] == "abc" and facts["env_python"] == str(env / "bin" / "python")


# -- the command lines a Windows host gets ------------------------------------------------
def windows_transport(shell: str) -> SshTransport:
    return SshTransport(Host(name="win", transport="ssh", targets=["windows-x86_64"], address="win.example",
                             shell=shell))


def test_powershell_hosts_get_the_boot_text_and_operation_byte_exact():
    transport = windows_transport("powershell")
    line = transport.hostside_command("facts")
    assert transport.python == "python", "Windows has no python3 by default"
    assert "$PSNativeCommandArgumentPassing = 'Standard'" in line
    call_part = line[line.index("; & ") + 4:line.index("; exit $LASTEXITCODE")]
    assert [ps_parse_verbatim(token) for token in verbatim_tokens(call_part)] == ["python", "-c", HOSTSIDE_BOOT, "facts"]


def verbatim_tokens(text: str) -> list[str]:
    """Split a run of blank-separated PowerShell verbatim strings: a quote closes one
    unless the next character is a quote too (the doubled, literal form)."""
    tokens, i = [], 0
    while i < len(text):
        assert text[i] == "'", f"expected a verbatim string at {i}: {text[i:i + 20]!r}"
        j = i + 1
        while True:
            if text[j] == "'" and j + 1 < len(text) and text[j + 1] == "'":
                j += 2
            elif text[j] == "'":
                break
            else:
                j += 1
        tokens.append(text[i:j + 1])
        i = j + 1
        assert i == len(text) or text[i] == " "
        i += 1
    return tokens


def test_cmd_hosts_get_the_boot_text_and_operation_byte_exact():
    from orchestrator.bootstrap import PROGRAM

    transport = windows_transport("cmd")
    for program, operation in ((HOSTSIDE_BOOT, "supervise"), (PROGRAM, "make_env")):
        line = transport.hostside_command(operation, program)
        assert len(line) < 8191, "cmd.exe refuses longer command lines"
        assert msvcrt_split(cmd_phase(line)) == ["python", "-c", program, operation]


def test_boot_text_runs_the_host_side_unchanged():
    """What the boot text executes is hostside.py itself (docstrings aside)."""
    done = subprocess.run([sys.executable, "-c", HOSTSIDE_BOOT.replace("exec(", "print(", 1)],
                          capture_output=True, text=True, check=True)
    assert "def push(params, stdin)" in done.stdout and "def supervise(params, stdin)" in done.stdout
    for name in hostside.OPERATIONS:
        assert f"def {name}(" in done.stdout


def test_windows_paths_on_the_host_side_stay_inside_the_workspace():
    """hostside's path check, with Windows' separators and drive letters."""
    for bad in ("..\\x", "C:\\x", "in\\..\\..\\x", "\\\\server\\share"):
        with pytest.raises(hostside.Refused):
            hostside._inside("C:/work/runs/r", bad)
    assert hostside._inside("/w", "in\\model.onnx") == os.path.join("/w", "in", "model.onnx")


def test_bootstrap_program_adds_its_environment_builder_to_the_host_side(tmp_path):
    """Bootstrap ships its own host-side code (bootstrap/hostside_env.py) with the
    transport's program; the transport's own program does not carry it."""
    from orchestrator.bootstrap import PROGRAM

    plain = subprocess.run([sys.executable, "-c", HOSTSIDE_BOOT.replace("exec(", "print(", 1)],
                           capture_output=True, text=True, check=True).stdout
    with_env = subprocess.run([sys.executable, "-c", PROGRAM.replace("exec(", "print(", 1)],
                              capture_output=True, text=True, check=True).stdout
    assert "def make_env(" not in plain and "def make_env(" in with_env
    done = subprocess.run([sys.executable, "-c", PROGRAM, "make_env"], input=json.dumps(
        {"workdir": str(tmp_path), "hash": "a" * 64, "wheels": str(tmp_path / "missing")}).encode() + b"\n",
        capture_output=True)
    assert done.returncode == 3 and b"missing" in done.stderr  # reached make_env, which found no wheels


# -- one job cannot reach another's inputs or its own supervisor (issue 14) ---------------
def test_job_code_writing_to_its_inputs_does_not_poison_the_shared_blob(tmp_path):
    """A workspace file must not be the shared blob itself: job code that rewrites its
    own copy of the packager must not change what the next, unrelated job runs."""
    code = b"print('packager')\n"
    first = workspace(tmp_path)
    answer(push(tmp_path, first, {"orchestrator/x.py": code}))
    with open(first / "orchestrator" / "x.py", "r+b") as planted:  # writes through a hard link
        planted.write(b"import os; os.system('evil')#")
    assert (tmp_path / "blobs" / sha(code)).read_bytes() == code
    second = workspace(tmp_path)
    answer(push(tmp_path, second, {"orchestrator/x.py": code}, send=[]))
    assert (second / "orchestrator" / "x.py").read_bytes() == code


def test_a_tampered_blob_is_detected_on_use_and_sent_again(tmp_path):
    code = b"print('packager')\n"
    answer(push(tmp_path, workspace(tmp_path), {"orchestrator/x.py": code}))
    blob = tmp_path / "blobs" / sha(code)
    blob.chmod(0o644)
    blob.write_bytes(b"print('evil!!!!')\n")  # same size, other content
    root = workspace(tmp_path)
    done = push(tmp_path, root, {"orchestrator/x.py": code})
    assert asked_for(done) == [sha(code)], "a blob that no longer matches its name is not used"
    answer(done)
    assert (root / "orchestrator" / "x.py").read_bytes() == code and blob.read_bytes() == code


def _run_supervised(work: Path, root: Path, script: str) -> subprocess.Popen:
    runner = subprocess.Popen(
        ["sh", "-c", PosixShell().command([sys.executable, "-c", HOSTSIDE_BOOT, "supervise"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    runner.stdin.write(json.dumps({"workdir": str(work), "root": str(root),
                                   "argv": [sys.executable, "-c", script]}).encode() + b"\n")
    runner.stdin.close()
    return runner


def test_job_code_cannot_redirect_the_kill_on_close(tmp_path):
    """The process group to stop is known to the controller (the supervisor's first line)
    and kept outside the workspace; a pid the job writes anywhere it can reach is not
    signalled, and neither is any group the supervisor did not start."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        def script(root: Path) -> str:
            return ("import os, pathlib, time; pathlib.Path(%r).write_text(str(%d));"
                    " [p.write_text(str(%d)) for p in pathlib.Path(%r).rglob('*pid*') if p.is_file()];"
                    " print('planted', flush=True); time.sleep(120)"
                    % (str(root / '.modelpack-pid'), bystander.pid, bystander.pid, str(tmp_path)))

        root = workspace(tmp_path)
        runner = _run_supervised(tmp_path, root, script(root))
        first = runner.stdout.readline().decode()
        assert first.startswith(hostside.RESULT), "the supervisor names its group to the controller first"
        group = json.loads(first[len(hostside.RESULT):])
        assert runner.stdout.readline() == b"planted\n"
        assert answer(call(tmp_path, "close", {"root": str(root), "group": group})) == {"removed": True}
        assert runner.wait(timeout=15) != 0
        assert bystander.poll() is None, "a process the packager did not start was signalled"
        # the controller died and the job forged every pid file it could find: `hosts
        # clean` removes the workspace but signals nothing it cannot prove is the packager's
        root = workspace(tmp_path, ttl=0.01)
        runner = _run_supervised(tmp_path, root, script(root))
        runner.stdout.readline()
        assert runner.stdout.readline() == b"planted\n"
        time.sleep(0.05)
        answer(call(tmp_path, "clean", {}))
        assert bystander.poll() is None, "a forged pid file was obeyed"
        assert not root.exists()
    finally:
        bystander.kill()
        for leftover in (runner,) if "runner" in locals() else ():
            os.killpg(leftover.pid, 9) if leftover.poll() is None else None


def test_clean_stops_a_supervisor_left_by_a_dead_controller(tmp_path):
    root = workspace(tmp_path, ttl=0.01)
    runner = _run_supervised(tmp_path, root, "import time; print('up', flush=True); time.sleep(120)")
    try:
        runner.stdout.readline()
        assert runner.stdout.readline() == b"up\n"
        assert not list(root.rglob("*pid*")), "nothing about the supervisor lies inside the workspace"
        time.sleep(0.05)
        answer(call(tmp_path, "clean", {}))
        assert runner.wait(timeout=15) != 0 and not root.exists()
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, 9)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_lease_holder_stops_other_controllers_packagers_and_thaw_or_a_broken_lease_resumes_them(tmp_path):
    """Supervisors from any controller leave a record in the workdir; the lease holder
    stops every one outside its own workspaces (``mine``), and what it stopped is resumed
    by ``thaw``, or, if the holder died, by whoever breaks its expired lease."""
    spin = "print('started', flush=True)\nwhile True: pass"
    mine, theirs = workspace(tmp_path), workspace(tmp_path)
    runners = [_run_supervised(tmp_path, root, spin) for root in (mine, theirs)]
    try:
        groups = [json.loads(r.stdout.readline().decode().removeprefix(hostside.RESULT)) for r in runners]
        assert [r.stdout.readline() for r in runners] == [b"started\n"] * 2
        lease = {"holder": "me", "ttl": 0.5, "wait": 0}
        assert answer(call(tmp_path, "bench_lease", {"take": True, **lease})) == {"held": True}
        assert answer(call(tmp_path, "freeze_foreign", {"mine": [str(mine)]})) == {"frozen": 1}
        assert _state(groups[1]["pid"]) == "T" and _state(groups[0]["pid"]) in "RS"
        assert answer(call(tmp_path, "thaw", {})) == {"done": True}
        assert _state(groups[1]["pid"]) in "RS"
        # the holder stops the other job again and dies: its lease expires and is broken
        assert answer(call(tmp_path, "freeze_foreign", {"mine": [str(mine)]})) == {"frozen": 1}
        assert _state(groups[1]["pid"]) == "T"
        time.sleep(0.6)
        assert answer(call(tmp_path, "bench_lease", {"take": True, "holder": "next", "ttl": 60, "wait": 5})) \
            == {"held": True}
        assert _state(groups[1]["pid"]) in "RS"
        assert answer(call(tmp_path, "bench_lease", {"take": False, "holder": "next"})) == {"held": False}
    finally:
        for group, root in zip(groups, (mine, theirs)):
            call(tmp_path, "close", {"root": str(root), "group": group})
        for runner in runners:
            runner.wait(timeout=15)


def test_records_left_by_a_killed_controller_are_dropped_and_live_ones_kept(tmp_path):
    """A controller killed outright leaves its packagers' records behind (its workspace is
    gone, its process too); every later lease holder would read them forever. The next
    ``freeze_foreign`` drops exactly those, and keeps a record whose workspace still exists."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    dead.wait()
    gone = tmp_path / "runs" / "gone"
    hostside.record_group(str(tmp_path), str(gone), dead.pid)
    kept = workspace(tmp_path)
    hostside.record_group(str(tmp_path), str(kept), dead.pid)
    assert answer(call(tmp_path, "bench_lease", {"take": True, "holder": "me", "ttl": 60, "wait": 0})) == {"held": True}
    answer(call(tmp_path, "freeze_foreign", {"mine": []}))
    assert sorted(p.name for p in (tmp_path / "pids").iterdir()) == [kept.name + ".json"]


def test_on_windows_pausing_suspends_the_workspaces_job_and_every_release_resumes_it(tmp_path, monkeypatch):
    """Windows' Python has no SIGSTOP or SIGCONT: there, pausing suspends the processes of
    the workspace's job object (the real call is exercised under Wine in
    tests/integration/test_windows.py). Every suspension is undone exactly once, by
    ``thaw`` or by giving the lease back, and nothing looks the signals up (under Wine, a
    leftover lease made the next build on the host wait for its expiry)."""
    import signal

    monkeypatch.setattr(hostside, "WINDOWS", True)
    for name in ("SIGSTOP", "SIGCONT"):
        monkeypatch.delattr(signal, name)
    suspended: dict[str, int] = {}

    def suspend_job(root: str, on: bool) -> bool:  # the job object boundary, faked
        suspended[root] = suspended.get(root, 0) + (1 if on else -1)
        return True

    monkeypatch.setattr(hostside, "_suspend_job", suspend_job)
    params = {"workdir": str(tmp_path), "holder": "me", "ttl": 60, "wait": 1}
    mine, theirs = workspace(tmp_path), workspace(tmp_path)
    (tmp_path / "pids").mkdir(exist_ok=True)
    for root in (mine, theirs):
        record = {"pid": os.getpid() + 1, "started": None, "root": str(root)}
        (tmp_path / "pids" / f"{root.name}.json").write_text(json.dumps(record))
    assert hostside.bench_lease({**params, "take": True}, None) == {"held": True}
    assert hostside.freeze_foreign({"workdir": str(tmp_path), "mine": [str(mine)]}, None) == {"frozen": 1}
    assert suspended == {str(theirs): 1}
    hostside.thaw({"workdir": str(tmp_path)}, None)
    assert suspended == {str(theirs): 0}
    # frozen again, then the lease is given back without a thaw: the release resumes it
    hostside.freeze_foreign({"workdir": str(tmp_path), "mine": [str(mine)]}, None)
    hostside.bench_lease({**params, "take": False}, None)
    assert suspended == {str(theirs): 0} and not (tmp_path / "benchmark.lease").exists()
    record = {"pid": os.getpid() + 1, "started": None, "root": str(mine)}
    assert hostside.freeze({"workdir": str(tmp_path), "root": str(mine), "group": record, "on": True}, None) == \
        {"done": True}
    assert hostside.freeze({"workdir": str(tmp_path), "root": str(mine), "group": record, "on": False}, None) == \
        {"done": True}
    assert suspended[str(mine)] == 0
    # a record naming another workspace is not ours to pause
    assert hostside.freeze({"workdir": str(tmp_path), "root": str(theirs), "group": record, "on": True}, None) == \
        {"done": False}
    assert hostside.bench_lease({**params, "holder": "next", "take": True}, None) == {"held": True}


def test_wine_is_taken_from_the_hosts_answer_or_from_the_inventory(tmp_path):
    """A host under Wine says so (Wine's ntdll); ``emulation: wine`` in hosts.yaml covers
    one that does not. Either way its builds count as emulated; a native host never."""
    def transport(wine: str | None, declared: str | None) -> SshTransport:
        host = Host(name="w", transport="ssh", targets=["windows-x86_64"], address="h",
                    **({"emulation": declared} if declared else {}))
        made = SshTransport(host)
        made._facts = {"os": "windows", "machine": "amd64", "wine": wine}
        return made

    assert transport("10.0", None).emulation() == "wine 10.0"
    assert transport(None, "wine").emulation() == "wine"
    assert transport(None, None).emulation() is None
    assert hostside.facts({"workdir": str(tmp_path)}, None)["wine"] is None  # this Linux machine
