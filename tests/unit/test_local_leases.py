"""The benchmark lease on this machine (local transport), with real packagers: one
benchmark at a time across jobs and across controllers of this user, the others'
packagers stopped meanwhile, and nothing left stopped by a holder that died."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.inventory import load_inventory
from orchestrator.transports import hostside
from orchestrator.transports.local import LocalTransport, LocalWorkspace, state_folder
from tests.conftest import two_controllers_take_turns, two_jobs_take_turns


def local_inventory(tmp_path: Path, slots: int) -> Path:
    hosts = tmp_path / "hosts-here.yaml"
    hosts.write_text(f"hosts:\n  - {{name: here, transport: local, targets: [linux-x86_64], slots: {slots}}}\n")
    return hosts


def test_two_selection_jobs_on_a_two_slot_local_host_take_turns_benchmarking_the_other_stopped(
        write_spec, tmp_path):
    two_jobs_take_turns(write_spec, tmp_path, local_inventory(tmp_path, slots=2))


def test_two_controllers_on_this_machine_take_turns_and_stop_each_others_packagers(write_spec, tmp_path):
    """Two `modelpack build` processes on this machine: the lock file makes them time one
    at a time, and the first to time SIGSTOPs the other controller's packager (found by
    the record its workspace left in the shared state folder, proven live and its own)."""
    two_controllers_take_turns(write_spec, tmp_path, local_inventory(tmp_path, slots=1))
    assert not list((state_folder() / "pids").glob("*.json")), "every record is removed when its run ends"


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _hold_then_die(inventory: str, ready) -> None:
    """A controller that takes the lease, pauses other controllers' packagers, and is
    killed before it can resume them."""
    transport = LocalTransport(load_inventory(Path(inventory)).hosts[0])
    with transport.benchmark_lease("doomed"), transport.others_paused([]):
        ready.set()
        time.sleep(3600)


def test_a_holder_that_dies_leaves_nothing_stopped_for_long(tmp_path):
    """A controller killed while it holds the lease loses its lock with its life; the
    next controller to take the lock resumes what the dead one had stopped."""
    inventory = local_inventory(tmp_path, slots=1)
    workspace = LocalWorkspace()
    other = subprocess.Popen([sys.executable, "-c", "while True: pass"], cwd=workspace.root,
                             start_new_session=True)
    try:
        hostside.record_group(str(state_folder()), str(workspace.root), other.pid)
        ready = multiprocessing.get_context("fork").Event()
        holder = multiprocessing.get_context("fork").Process(target=_hold_then_die, args=(str(inventory), ready),
                                                             daemon=True)
        holder.start()
        assert ready.wait(60)
        deadline = time.monotonic() + 10
        while _state(other.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(other.pid) == "T", "the holder stopped the other controller's packager"
        holder.kill()
        holder.join(10)
        assert _state(other.pid) == "T", "nobody has resumed it yet"
        with LocalTransport(load_inventory(inventory).hosts[0]).benchmark_lease("next"):
            assert _state(other.pid) in "RS", "the next holder resumed it"
    finally:
        os.killpg(other.pid, 9)
        other.wait()
        os.unlink(hostside.group_file(str(state_folder()), str(workspace.root)))
        workspace.close()
