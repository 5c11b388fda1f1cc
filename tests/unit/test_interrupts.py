"""Cancellation by SIGINT, SIGTERM and SIGHUP through the local transport: the same
clean stop, exit 128 + the signal, nothing left; a second signal during cleanup exits at
once; SIGINT ignored at start stays ignored."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import _default_signals, spawn_modelpack
from tests.models import REPO

SPEC = REPO / "examples" / "tinycnn" / "camera.yaml"  # two compilers: long enough to interrupt


def start_build(tmp_path: Path, local_hosts: Path, ignore_sigint: bool = False) -> subprocess.Popen:
    # --keep: the work directory stays, but the packager must still stop with the run
    proc = spawn_modelpack("build", str(SPEC), "--out", str(tmp_path / "out"), "--hosts", str(local_hosts),
                           "--no-cache", "--keep", cwd=REPO, ignore_sigint=ignore_sigint)
    for line in proc.stdout:
        if "stage=package: " in line:
            return proc
    raise AssertionError("the build ended before packaging: " + proc.stdout.read())


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_each_cancelling_signal_stops_the_run_cleanly(tmp_path, local_hosts, signum, code):
    proc = start_build(tmp_path, local_hosts)
    started = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=15) == code
    assert time.monotonic() - started < 10
    rest = proc.stdout.read()  # EOF only once no packager process holds the pipe
    assert time.monotonic() - started < 10, "the packager and its workers outlived the controller"
    assert "interrupted" in rest or f"cancelled by {signal.Signals(signum).name}" in rest, rest
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing partial in --out"
    assert not list(tmp_path.glob(".out.modelpack-*")), "staging removed"


def test_sigint_ignored_at_start_stays_ignored_and_sigterm_still_cancels(tmp_path, local_hosts):
    proc = start_build(tmp_path, local_hosts, ignore_sigint=True)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, "a program started with SIGINT ignored keeps ignoring it"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 143


CLEANUP = """
import sys, time
from orchestrator.interrupts import cancellable, exit_code
try:
    with cancellable("LEFT: run modelpack hosts clean"):
        try:
            print("running", flush=True)
            time.sleep(60)
        except KeyboardInterrupt as first:
            print("cleaning", flush=True)
            time.sleep(60)
            sys.exit(exit_code(first))
except KeyboardInterrupt as interrupt:
    sys.exit(exit_code(interrupt))
"""


def test_a_second_signal_during_cleanup_exits_at_once_and_says_what_may_be_left():
    proc = subprocess.Popen([sys.executable, "-c", CLEANUP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, preexec_fn=_default_signals)
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "cleaning"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=5) == 130
    assert time.monotonic() - started < 2
    err = proc.stderr.read().strip().splitlines()
    assert len(err) == 1 and "SIGINT again while cleaning up" in err[0] and "hosts clean" in err[0], err
