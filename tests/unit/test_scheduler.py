"""Scheduling with failover, circuit breaking and slot limits. Hosts are local
transports wrapped at the transport boundary to inject failures and record timing;
the packager and the engine are real."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.collect import staging_dir
from orchestrator.inventory import Host
from orchestrator.plan import PlannedJob, plan
from orchestrator.scheduler import Scheduler
from orchestrator.spec import load_spec
from orchestrator.transports.base import Transport, TransportError
from orchestrator.transports.local import LocalTransport, LocalWorkspace


class InstrumentedTransport(LocalTransport):
    """A local host that can be dead, and that records how many workspaces run at once."""

    def __init__(self, host: Host, dead: bool = False, delay: float = 0.0) -> None:
        super().__init__(host)
        self.dead, self.delay = dead, delay
        self.opened = 0
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def open(self, environment, labels, lifetime=None):
        with self._lock:
            self.opened += 1
        if self.dead:
            raise TransportError(f"{self.name}: connection refused")
        transport = self

        class Counted(LocalWorkspace):
            def run(self, argv, env, timeout, on_line):
                with transport._lock:
                    transport.active += 1
                    transport.peak = max(transport.peak, transport.active)
                try:
                    time.sleep(transport.delay)
                    return super().run(argv, env, timeout, on_line)
                finally:
                    with transport._lock:
                        transport.active -= 1

        return Counted()


def specs(tmp_path: Path, tinycnn: Path, count: int) -> list:
    loaded = []
    for i in range(count):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        (folder / "m.onnx").write_bytes(tinycnn.read_bytes())
        path = folder / "modelpack.yaml"
        path.write_text(yaml.safe_dump({"name": f"m{i}", "version": "1", "model": "m.onnx",
                                        "targets": ["linux-x86_64"]}))
        loaded.append(load_spec(path))
    return loaded


def scheduler(jobs: list[PlannedJob], transports: list[InstrumentedTransport], out: Path) -> Scheduler:
    return Scheduler(jobs, {j.id: [t.host for t in transports] for j in jobs},
                     {t.name: t for t in transports}, out, staging_dir(out), run_labels={})


def host(name: str, slots: int = 1, speed: float = 1.0) -> Host:
    return Host(name=name, transport="local", targets=["linux-x86_64"], slots=slots, speed=speed)


def test_dead_host_costs_one_attempt_then_is_disabled(tmp_path):
    from tests.models import TINYCNN

    jobs = plan(specs(tmp_path, TINYCNN, 5))
    dead = InstrumentedTransport(host("dead", slots=2, speed=10.0), dead=True)
    alive = InstrumentedTransport(host("alive", slots=1))
    records = scheduler(jobs, [dead, alive], tmp_path / "out").run()
    assert [r.status for r in records] == ["built"] * 5
    assert dead.opened == 1, "a dead host costs one attempt, not one per job or per slot"
    first = next(r for r in records if len(r.attempts) == 2)
    assert [a.host for a in first.attempts] == ["dead", "alive"]
    assert first.attempts[0].status == "infrastructure" and "connection refused" in first.attempts[0].reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"m{i}-1-linux-x86_64.tar.gz" for i in range(5)]


def test_no_healthy_host_left_reports_every_attempt(tmp_path):
    from tests.models import TINYCNN

    jobs = plan(specs(tmp_path, TINYCNN, 2))
    a = InstrumentedTransport(host("a"), dead=True)
    b = InstrumentedTransport(host("b"), dead=True)
    records = scheduler(jobs, [a, b], tmp_path / "out").run()
    assert all(r.status == "failed" and r.failure == "infrastructure" for r in records)
    assert a.opened + b.opened == 2
    assert all("a: connection refused" in r.reason or "disabled earlier" in r.reason for r in records)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_package_failure_is_not_retried(tmp_path):
    from tests.models import TINYCNN

    loaded = specs(tmp_path, TINYCNN, 1)
    bad = tmp_path / "m0" / "m.onnx"
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Nope", ["x"], ["y"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]), str(bad))
    jobs = plan([load_spec(loaded[0].path)])
    a, b = InstrumentedTransport(host("a")), InstrumentedTransport(host("b"))
    [record] = scheduler(jobs, [a, b], tmp_path / "out").run()
    assert record.status == "failed" and record.failure == "package"
    assert len(record.attempts) == 1 and a.opened + b.opened == 1
    assert "Nope" in record.reason


def test_slots_are_never_oversubscribed(tmp_path):
    from tests.models import TINYCNN

    jobs = plan(specs(tmp_path, TINYCNN, 6))
    a = InstrumentedTransport(host("a", slots=2), delay=0.2)
    b = InstrumentedTransport(host("b", slots=1), delay=0.2)
    records = scheduler(jobs, [a, b], tmp_path / "out").run()
    assert all(r.status == "built" for r in records)
    assert a.peak <= 2 and b.peak <= 1
    assert a.peak == 2, "free slots should be used"
    assert a.opened + b.opened == 6


def test_load_100_jobs_over_4_hosts_with_2_slots_never_oversubscribes(tmp_path):
    """The recorded timeline (every attempt's start and end on its host) must never show
    more than a host's slots at once, and the run must finish (no deadlock)."""
    import random

    from tests.stand_in import stand_in
    from tests.simulated import SimulatedTransport
    from tests.models import TINYCNN, renamed_specs

    jobs = plan(renamed_specs(specs(tmp_path, TINYCNN, 1)[0], 100))
    rng = random.Random(7)
    durations = {j.spec.spec.name: rng.uniform(0.01, 0.08) for j in jobs}
    hosts = [Host(name=f"h{i}", transport="local", targets=["linux-x86_64"], slots=2) for i in range(4)]
    transports = [SimulatedTransport(h, stand_in(lambda job, host: durations[job.name])) for h in hosts]
    out = tmp_path / "out"
    sched = Scheduler(jobs, {j.id: hosts for j in jobs}, {t.name: t for t in transports}, out, staging_dir(out),
                      run_labels={})
    done = threading.Event()
    records: list = []
    runner = threading.Thread(target=lambda: (records.extend(sched.run()), done.set()), daemon=True)
    runner.start()
    assert done.wait(120), "the scheduler deadlocked"
    assert [r.status for r in records] == ["built"] * 100
    assert len(list(out.glob("*.tar.gz"))) == 100
    for h in hosts:
        events = sorted([(a.started_at, 1) for r in records for a in r.attempts if a.host == h.name]
                        + [(a.ended_at, -1) for r in records for a in r.attempts if a.host == h.name],
                        key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        assert peak <= h.slots, f"{h.name} ran {peak} jobs at once with {h.slots} slots"
        assert any(a.host == h.name for r in records for a in r.attempts), f"{h.name} got no work"


class StallingTransport(Transport):
    """A host that stalls in one stage until its workspace is destroyed (the abort)."""

    def __init__(self, name: str, stall: str) -> None:
        from tests.stand_in import stand_in
        from tests.simulated import SimulatedTransport

        self.inner = SimulatedTransport(host(name), stand_in(lambda job, h: 0.0))
        self.host, self.name, self.stall = self.inner.host, name, stall
        self.closed = threading.Event()

    def probe(self, environment):
        return self.inner.probe(environment)

    def open(self, environment, labels, lifetime=None):
        if self.stall == "connect":
            time.sleep(30)
        workspace = self.inner.open(environment, labels)
        transport = self

        class Stalling(type(workspace)):
            def push(self, files):
                if transport.stall == "push":
                    transport.closed.wait(30)
                    raise TransportError("the connection was torn down")
                super().push(files)

            def close(self):
                transport.closed.set()
                super().close()

        workspace.__class__ = Stalling
        return workspace


@pytest.mark.parametrize("stall", ["connect", "push"])
def test_a_stalled_stage_fails_over_at_its_own_timeout(tmp_path, stall):
    from orchestrator.execute import StageTimeouts
    from tests.stand_in import stand_in
    from tests.simulated import SimulatedTransport
    from tests.models import TINYCNN

    jobs = plan(specs(tmp_path, TINYCNN, 1))
    stuck = StallingTransport("stuck", stall)
    good = SimulatedTransport(host("good", speed=0.1), stand_in(lambda job, h: 0.0))  # slower: tried second
    out = tmp_path / "out"
    sched = Scheduler(jobs, {jobs[0].id: [stuck.host, good.host]}, {"stuck": stuck, "good": good}, out,
                      staging_dir(out), run_labels={},
                      timeouts=StageTimeouts(connect=0.5, push=0.5, package=60, pull=60))
    started = time.monotonic()
    [record] = sched.run()
    assert time.monotonic() - started < 10
    assert record.status == "built"
    first = record.attempts[0]
    assert first.host == "stuck" and first.status == "infrastructure"
    assert f"{stall} exceeded its 0.5 s limit" in first.reason
    if stall == "push":
        assert stuck.closed.is_set(), "the stalled workspace was destroyed"


def test_native_hosts_are_preferred_and_emulated_ones_get_longer_to_package(tmp_path):
    from orchestrator.execute import StageTimeouts
    from tests.stand_in import stand_in
    from tests.simulated import SimulatedTransport
    from tests.models import TINYCNN

    jobs = plan(specs(tmp_path, TINYCNN, 1))
    env = jobs[0].target.environment
    seen: dict[str, float] = {}
    lifetimes: dict[str, float] = {}

    class Recording(SimulatedTransport):
        def open(self, environment, labels, lifetime=None):
            lifetimes[self.name] = lifetime
            workspace = super().open(environment, labels)
            original = workspace.run

            def run(argv, env_vars, timeout, on_line):
                seen[self.name] = timeout
                return original(argv, env_vars, timeout, on_line)

            workspace.run = run
            return workspace

    emulated = Recording(host("emulated", speed=50.0), stand_in(lambda job, h: 0.0))
    native = Recording(host("native", speed=0.1), stand_in(lambda job, h: 0.0))
    out = tmp_path / "out"

    def run(hosts: list) -> list:
        sched = Scheduler(jobs, {jobs[0].id: [h.host for h in hosts]}, {h.name: h for h in hosts}, out,
                          staging_dir(out), run_labels={}, timeouts=StageTimeouts(package=60),
                          emulated={("emulated", env)}, cache=None)
        return sched.run()

    [record] = run([emulated, native])
    assert [a.host for a in record.attempts] == ["native"], "a free native host wins over a faster emulated one"
    [record] = run([emulated])
    assert record.status == "built" and seen == {"native": 60, "emulated": 600}
    limits = StageTimeouts(package=60)
    assert lifetimes["native"] == limits.lifetime, "a workspace lives for its attempt's stage limits"
    assert lifetimes["emulated"] == limits.lifetime + 540, "...with the longer packaging limit of emulation"
