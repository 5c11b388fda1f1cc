"""Windows packages made and run by Windows binaries: the Wine build host
(images/windows-x86_64-wine) reached over SSH exactly as a Windows machine with OpenSSH
and its default shell, cmd.exe. Nothing here runs in-process: the host's own embeddable
CPython bootstraps, compiles, benchmarks and self-tests.

Skipped, with the reason, where the Wine image is not built (scripts/build-images makes
it); MODELPACK_REQUIRE_WINE=1 turns that into a failure.
"""

from __future__ import annotations

import json
import re
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.images import image_tag
from orchestrator.runtime.archive import extract
from orchestrator.transports.ssh import SshTransport
from tests.conftest import unavailable
from tests.integration.conftest import start_sshd
from tests.corpus import MODELS
from tests.models import pypi_model

ENVIRONMENT = "windows-x86_64-wine"
#: numpy 2.1 and later import ucrtbase's crealf, which Wine 10 does not implement
PINS = {"numpy": "2.0.2"}


@pytest.fixture(scope="module")
def wine_host(docker_client_module, client_key, tmp_path_factory):
    """A Wine build host on a private network, and an inventory for it whose host key is
    pinned; yields (inventory path, container, network)."""
    try:
        docker_client_module.images.get(image_tag(ENVIRONMENT))
    except Exception as exc:
        unavailable(f"the Windows (Wine) host image is not built ({exc}); run scripts/build-images",
                    "MODELPACK_REQUIRE_WINE")
    started = start_sshd(docker_client_module, client_key, environment=ENVIRONMENT)
    address, host_key, container, network = next(started)
    inventory = tmp_path_factory.mktemp("wine") / "hosts.yaml"
    inventory.write_text(yaml.safe_dump({"hosts": [{
        "name": "winebox", "transport": "ssh", "targets": ["windows-x86_64"], "address": address, "user": "root",
        "key": str(client_key[0]), "host_key": host_key, "known_hosts": str(inventory.parent / "none"),
        "shell": "cmd", "python": "python", "pins": PINS, "liveness_timeout": 8}]}))
    try:
        yield inventory, container, network
    finally:
        next(started, None)


@pytest.fixture(scope="module")
def bootstrapped(wine_host):
    """Bootstrap from nothing, then again: [(exit code, output, seconds)] for both."""
    import contextlib
    import io

    inventory = wine_host[0]
    runs = []
    for _ in range(2):
        out = io.StringIO()
        began = time.monotonic()
        with contextlib.redirect_stdout(out):
            code = main(["hosts", "bootstrap", "--hosts", str(inventory)])
        runs.append((code, out.getvalue(), time.monotonic() - began))
    return runs


def test_bootstrap_makes_an_environment_for_the_embeddable_python_then_reuses_it_in_seconds(bootstrapped):
    (first_code, first, _), (again_code, again, again_s) = bootstrapped
    assert first_code == 0, first
    assert re.search(r"ok   winebox: windows-x86_64 environment \w+ created", first), first
    assert again_code == 0 and "reused" in again, again
    assert again_s < 20, f"an unchanged environment took {again_s:.1f} s to confirm"
    # a copy of the embeddable distribution, not a venv (it has none)
    assert re.search(r"builds use C:/users/root/\.modelpack/envs/\w+/python\.exe", again), again


def test_hosts_check_says_windows_x86_64_its_python_and_emulated_wine(capsys, wine_host, bootstrapped):
    assert main(["hosts", "check", "--hosts", str(wine_host[0]), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["checks"][0]
    assert row["ready"] and row["emulated"] is True
    assert re.fullmatch(r"wine \d+\.\d+.*", row["emulation"]), row
    assert "(cmd, windows/amd64 under wine" in row["detail"], row
    # the host's own Python and engines, with the host's numpy pin
    assert re.search(r"Python/onnxruntime/numpy 3\.11\.\d+ 1\.32\.0 2\.0\.2", row["detail"]), row


def classifier_spec(folder: Path, **keys) -> Path:
    """A spec folder for PP-OCR's direction classifier (a real network, dynamic width,
    with the corpus's shapes) for windows-x86_64; ``keys`` add to or replace the spec's."""
    folder.mkdir(parents=True)
    model = pypi_model("ppocr_cls")
    (folder / model.name).write_bytes(model.read_bytes())
    (folder / "modelpack.yaml").write_text(yaml.safe_dump({
        "name": "textdir", "version": "1.0.0", "model": model.name, "targets": ["windows-x86_64"],
        **MODELS["ppocr_cls"].spec, **keys}))
    return folder


@pytest.fixture(scope="module")
def windows_package(wine_host, bootstrapped, tmp_path_factory):
    """A real network (PP-OCR's direction classifier, dynamic width) packaged for
    windows-x86_64 with all four compilers on the Wine host."""
    folder = classifier_spec(tmp_path_factory.mktemp("wine-build") / "spec", name="textdir", version="2.0.0",
                             compilers=["onnxruntime", "openvino", "mnn", "ncnn"], zip=True)
    model = folder / pypi_model("ppocr_cls").name
    out = folder.parent / "dist"
    code = main(["build", str(folder), "--hosts", str(wine_host[0]), "--out", str(out), "--no-cache"])
    return code, out, model


def test_all_four_windows_engines_build_and_self_test_under_wine_and_say_so(windows_package):
    code, out, _ = windows_package
    assert code == 0
    package = out / "textdir-2.0.0-windows-x86_64.tar.gz"
    with tarfile.open(package) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    statuses = {c["id"]: c["status"] for c in manifest["candidates"]}
    assert set(statuses) == {"onnxruntime", "openvino", "mnn", "ncnn"}
    assert set(statuses.values()) <= {"selected", "passed"}, manifest["candidates"]
    selftest = manifest["selftest"]
    assert selftest["passed"] and not selftest["on_target_os"]
    assert re.fullmatch(r"windows/x86_64 under wine \d+\.\d+.*", selftest["ran_on"]), selftest
    assert "under wine" in selftest["not_checked"][0]
    assert manifest["selection"]["emulated"] is True and "emulation" in manifest["selection"]["note"]
    assert all(c["emulated"] for c in manifest["candidates"] if c.get("latency_ms"))
    build = manifest["provenance"]["build_platform"]
    assert build["os"] == "windows" and build["emulation"].startswith("wine ")
    # the host's pin override is recorded, and the versions that really ran
    assert manifest["provenance"]["pin_overrides"] == PINS
    assert build["toolchain"]["numpy"] == "2.0.2" and "numpy-2.0.2-cp311-cp311-win_amd64.whl" in build["wheels"]


def test_the_windows_package_matches_onnxruntime_on_linux_and_its_zip_twin(windows_package, tmp_path):
    code, out, model = windows_package
    assert code == 0
    tar_root, zip_root = tmp_path / "tar", tmp_path / "zip"
    extract(out / "textdir-2.0.0-windows-x86_64.tar.gz", tar_root)
    with zipfile.ZipFile(out / "textdir-2.0.0-windows-x86_64.zip") as archive:
        archive.extractall(zip_root)
    files = {p.relative_to(tar_root).as_posix(): p.read_bytes() for p in tar_root.rglob("*") if p.is_file()}
    assert files == {p.relative_to(zip_root).as_posix(): p.read_bytes() for p in zip_root.rglob("*") if p.is_file()}
    manifest = json.loads(files["manifest.json"])
    # every size the package was checked at: the Windows engines' reference (onnxruntime
    # for Windows under Wine) against onnxruntime for Linux, here, on the same inputs
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    sizes = [manifest["samples"]] + manifest["samples"]["sizes"]
    for size in sizes:
        feeds = {name: np.load(tar_root / path) for name, path in size["inputs"].items()}
        linux = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        for name, path in size["reference"].items():
            np.testing.assert_allclose(np.load(tar_root / path), linux[name], rtol=manifest["tolerance"]["rtol"],
                                       atol=manifest["tolerance"]["atol"])
    assert len(sizes) >= 2, "a dynamic-width model must be checked at more than one size"


def _lease_is_free(inventory: Path) -> bool:
    """Whether a newcomer gets the Wine host's benchmark lease at once (without waiting
    for whoever held it last to expire); given back straight away."""
    from orchestrator.inventory import load_inventory

    transport = SshTransport(load_inventory(inventory).hosts[0])
    try:
        probe = {"holder": "probe", "ttl": 60, "wait": 0}
        taken = transport.call("bench_lease", {**probe, "take": True})["held"]
        if taken:
            transport.call("bench_lease", {**probe, "take": False})
        return taken
    finally:
        transport.drop()


def test_a_windows_build_gives_its_benchmark_lease_back(wine_host, windows_package):
    # Python on Windows cannot delete a file it holds open: the release removed the lease
    # folder while still reading its holder record, failed, and the next build on the
    # host waited for the lease to expire (15 minutes)
    assert windows_package[0] == 0
    assert _lease_is_free(wine_host[0]), "the build's lease is still held"


def test_verify_runs_the_windows_package_on_the_wine_host(capsys, wine_host, windows_package):
    _, out, _ = windows_package
    capsys.readouterr()
    assert main(["verify", str(out / "textdir-2.0.0-windows-x86_64.tar.gz"), "--hosts", str(wine_host[0])]) == 0
    assert "self-test passed on winebox" in capsys.readouterr().out


def test_closing_a_workspace_stops_everything_its_job_started(wine_host, bootstrapped):
    """Windows has no process groups: the supervisor's job object must take the packager's
    own children with it (Wine's taskkill has no /T, and /T misses orphans anyway)."""
    inventory, container, _ = wine_host
    from orchestrator.inventory import load_inventory

    transport = SshTransport(load_inventory(inventory).hosts[0])
    marker = f"modelpack-orphan-{time.monotonic_ns()}"
    child = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)',"
             f" '{marker}']); print('started', flush=True); time.sleep(600)")
    workspace = transport.open("windows-x86_64", {"org.modelpack.run": "orphans"})
    lines: list[str] = []
    runner = threading.Thread(target=lambda: _run_quietly(workspace, [workspace.python, "-c", child], lines),
                              daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while "started" not in lines and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "started" in lines, lines
    assert _processes(container, marker), "the grandchild should be running"
    workspace.close()
    deadline = time.monotonic() + 20
    while _processes(container, marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes(container, marker), "a process the job started outlived its workspace"
    transport.drop()


def test_a_benchmark_suspends_the_other_packagers_job_and_resumes_it(wine_host, bootstrapped):
    """Windows has no SIGSTOP: pausing a workspace (this controller's, and another
    controller's through ``others_paused``) suspends every process of its job object,
    the packager's own children included, and resuming lets them all go on."""
    inventory, _, _ = wine_host
    from orchestrator.inventory import load_inventory

    transport = SshTransport(load_inventory(inventory).hosts[0])
    ticker = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time\\n"
              "while True: print(\"grandchild\", flush=True); time.sleep(0.1)'])\n"
              "while True: print('child', flush=True); time.sleep(0.1)")
    workspace = transport.open("windows-x86_64", {"org.modelpack.run": "paused"})
    lines: list[str] = []
    runner = threading.Thread(target=lambda: _run_quietly(workspace, [workspace.python, "-c", ticker], lines),
                              daemon=True)
    runner.start()

    def ticking(window: float = 3.0) -> set[str]:
        """Which processes printed during ``window`` seconds (after output in flight drains)."""
        time.sleep(1.0)
        seen = len(lines)
        time.sleep(window)
        return set(lines[seen:])

    try:
        deadline = time.monotonic() + 60
        while {"child", "grandchild"} - set(lines) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ticking() == {"child", "grandchild"}, lines[-5:]
        assert workspace.pause()
        assert ticking() == set(), "a suspended job's processes went on"
        workspace.resume()
        assert ticking() == {"child", "grandchild"}
        with transport.benchmark_lease("test"), transport.others_paused([]) as frozen:
            assert frozen == 1 and ticking() == set(), "another controller's packager went on"
        assert ticking() == {"child", "grandchild"}, "the lease's release resumed it"
        assert _lease_is_free(inventory), "the lease was given back"
    finally:
        workspace.close()
        transport.drop()


def _run_quietly(workspace, argv: list[str], lines: list[str]) -> None:
    try:
        workspace.run(argv, {}, 300, lines.append)
    except Exception:  # the workspace is closed under it
        pass


def _processes(container, marker: str) -> list[str]:
    _, out = container.exec_run(["ps", "-eo", "args"])
    return [line for line in out.decode().splitlines() if marker in line and "ps -eo" not in line]


#: run on the host by Windows' Python: each line of its input through cmd.exe the way
#: Windows' OpenSSH hands a command over, CreateProcessW(NULL, "cmd.exe /c " + line)
DRIVER = ("import json, subprocess, sys; [print(json.dumps([done.returncode, done.stdout.decode('ascii', 'replace')"
          ".strip()]), flush=True) for done in (subprocess.run('cmd.exe /c ' + line, capture_output=True)"
          " for line in json.loads(sys.stdin.readline()))]")
#: prints its argv and one variable as JSON (ASCII, so no code page can change it)
ECHO = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ.get('MODELPACK_Q')]))"
#: what cmd.exe and the MSVC argv rules treat specially, and some that nobody should
METACHARACTERS = ' \t"\\^&|<>()@,;=\'`~*?[]{}$#é中'


def quoting_cases(count: int, seed: int = 15) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    pool = list(METACHARACTERS) + list("abcXYZ019-_./:")
    fixed = [["a b", 'say "hi"', "trailing\\", 'back\\"quote'], ["^", "&&", "|", "<in>", "(x)"],
             ["", " ", '""', "\\\\server\\share\\"], ['a\\\\"b', "c:\\path with space\\", "%notavar"]]
    drawn = [["".join(rng.choice(pool, size=int(rng.integers(0, 12)))) for _ in range(int(rng.integers(1, 4)))]
             for _ in range(count)]
    return fixed + drawn


def test_cmd_quoting_holds_against_wine_cmd_exe_and_windows_pythons_argv(wine_host, bootstrapped):
    """The cmd dialect's quoting, and the parser models the unit tests check it with
    (tests/unit/test_shells.py), against the real parsers: Wine's cmd.exe and the argv
    rules of Windows' CPython. Any case where the model and the real thing disagree is
    reported by name, not only failures of the quoting itself."""
    from orchestrator.inventory import load_inventory
    from orchestrator.transports.shells import Cmd, UnsafeValue
    from tests.unit.test_shells import cmd_phase, msvcrt_split

    transport = SshTransport(load_inventory(wine_host[0]).hosts[0])
    cmd = Cmd()
    cases, lines = [], []
    for args in quoting_cases(32):
        # cmd.exe cannot set an empty value, nor one with a double quote: refused (test_shells)
        value = "q" + args[0].replace('"', "'")
        try:
            lines.append(cmd.command(["python", "-c", ECHO, *args], env={"MODELPACK_Q": value}))
        except UnsafeValue:  # refused, not carried wrongly (the unit tests check which)
            continue
        cases.append(args)
    status: list[int] = []
    output = b"".join(transport.stream(cmd.command(["python", "-c", DRIVER]), 600, status,
                                       lambda send, read_line: send(json.dumps(lines).encode() + b"\n")))
    answers = [json.loads(row) for row in output.decode().splitlines() if row.startswith("[")]
    transport.drop()
    assert status == [0] and len(answers) == len(cases), output[-2000:]
    wrong, model_differs = [], []
    for args, line, (code, printed) in zip(cases, lines, answers):
        real = json.loads(printed) if code == 0 and printed.startswith("[") else ["exit", code, printed]
        if real != [args, "q" + args[0].replace('"', "'")]:
            wrong.append((args, line, real))
        modelled = msvcrt_split(cmd_phase(cmd.command(["python", "-c", ECHO, *args])))
        if real[0] != modelled[3:] and real[0] != "exit":
            model_differs.append((args, modelled[3:], real[0]))
    assert not wrong, f"arguments changed on the way through cmd.exe: {wrong[:5]}"
    assert not model_differs, f"the parser models disagree with Wine's cmd.exe and Windows' Python: {model_differs[:5]}"
    assert len(cases) >= 34  # only '%notavar' is refused


def test_allow_emulation_false_keeps_builds_off_the_wine_host(capsys, wine_host, bootstrapped, tmp_path):
    """Wine feeds the same policy as qemu: the host reports it, and an inventory that
    forbids emulation there gets no build on it, with the reason."""
    inventory = yaml.safe_load(wine_host[0].read_text())
    inventory["hosts"][0]["allow_emulation"] = False
    strict = tmp_path / "hosts.yaml"
    strict.write_text(yaml.safe_dump(inventory))
    spec = classifier_spec(tmp_path / "spec", name="strict")
    capsys.readouterr()
    assert main(["build", str(spec), "--hosts", str(strict), "--out", str(tmp_path / "dist"), "--no-cache"]) == 2
    assert "under emulation and none has allow_emulation: true" in capsys.readouterr().err


def test_a_cut_connection_and_a_killed_host_fail_the_job_as_infrastructure_leaving_out_untouched(
        capsys, wine_host, bootstrapped, tmp_path):
    """Last in this module: it kills the host."""
    inventory, container, network = wine_host
    spec = classifier_spec(tmp_path / "spec", name="cut", compilers=["onnxruntime", "openvino", "mnn", "ncnn"])
    out = tmp_path / "dist"
    out.mkdir()
    (out / "kept.txt").write_text("already here")
    result: list[int] = []
    builder = threading.Thread(target=lambda: result.append(
        main(["build", str(spec), "--hosts", str(inventory), "--out", str(out), "--no-cache", "--json",
              str(tmp_path / "summary.json")])), daemon=True)
    builder.start()
    deadline = time.monotonic() + 300
    while not _processes(container, "orchestrator.packager") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes(container, "orchestrator.packager"), "the build never started packaging"
    network.disconnect(container, force=True)
    container.kill()
    builder.join(300)
    assert result == [1]
    job = json.loads((tmp_path / "summary.json").read_text())["jobs"][0]
    assert job["status"] == "failed" and job["failure"] == "infrastructure", job
    # the run's own report files only: no package, nothing half-written
    assert {p.name for p in out.iterdir()} <= {"kept.txt", "report.html", "junit.xml", "summary.json"}
    assert (out / "kept.txt").read_text() == "already here"
