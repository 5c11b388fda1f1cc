"""Integration tests against the real Docker engine and the real build image."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from orchestrator.cli import main
from orchestrator.collect import staging_dir
from orchestrator.images import image_tag
from orchestrator.inventory import Host, load_inventory
from orchestrator.plan import plan
from orchestrator.execute import LIFETIME_MARGIN, StageTimeouts
from orchestrator.scheduler import Scheduler
from orchestrator.spec import load_spec
from orchestrator.transports.base import TransportError
from orchestrator.transports.docker import DockerTransport
from orchestrator.images import on_demand
from tests.conftest import spawn_modelpack, two_controllers_take_turns, two_jobs_take_turns
from tests.models import REPO, make_two_tower, renamed_specs, save

LABEL = "org.modelpack"

#: builds a missing build image on first use, as the CLI does
IMAGES = on_demand(lambda line: None)


def labelled(client, run: str | None = None) -> list:
    flt = f"{LABEL}.run={run}" if run else LABEL
    return client.containers.list(all=True, filters={"label": flt})


@pytest.fixture
def docker_hosts(tmp_path: Path, docker_client) -> Path:
    path = tmp_path / "hosts-docker.yaml"
    path.write_text(
        "hosts:\n"
        "  - {name: dock-a, transport: docker, targets: [linux-x86_64], platform: linux/amd64, slots: 1}\n"
        "  - {name: dock-b, transport: docker, targets: [linux-x86_64], platform: linux/amd64, slots: 1}\n"
    )
    return path


def test_example_builds_in_docker_reproducibly_and_verifies_in_a_fresh_container(
        capsys, docker_client, docker_hosts, tmp_path):
    spec = REPO / "examples" / "tinycnn" / "modelpack.yaml"
    before = {c.id for c in labelled(docker_client)}
    assert main(["build", str(spec), "--out", str(tmp_path / "a"), "--hosts", str(docker_hosts),
                 "--json", str(tmp_path / "summary.json")]) == 0
    assert main(["build", str(spec), "--out", str(tmp_path / "b"), "--hosts", str(docker_hosts), "--no-cache"]) == 0
    capsys.readouterr()
    name = "tinycnn-1.0.0-linux-x86_64.tar.gz"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with tarfile.open(tmp_path / "a" / name) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    prov = manifest["provenance"]
    assert prov["transport"] == "docker" and prov["image"] == image_tag("linux-x86_64")
    assert prov["host"] in ("dock-a", "dock-b")
    assert prov["build_platform"]["os"] == "linux" and prov["build_platform"]["arch"] == "x86_64"
    assert manifest["compiler"]["reproducible"] is True
    assert manifest["engines"]["onnxruntime"]["version"] == "1.32.0"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["jobs"][0]["status"] == "built" and summary["jobs"][0]["attempts"][0]["stages"]["package"] > 0

    assert main(["verify", str(tmp_path / "a" / name), "--hosts", str(docker_hosts)]) == 0
    assert "self-test passed on dock-" in capsys.readouterr().out
    assert {c.id for c in labelled(docker_client)} == before, "containers must always be removed"


def test_a_release_built_in_docker_names_the_engine_wheels_that_built_it_with_their_hashes(
        capsys, docker_client, docker_hosts, tmp_path, monkeypatch):
    """The image records the wheels it was installed from; provenance and BOM name them."""
    import base64
    import hashlib

    from orchestrator.images import Environment, _wheelhouse
    from tests.unit.test_attest import key_pair

    key, _ = key_pair(tmp_path, "release")
    spec = REPO / "examples" / "tinycnn" / "modelpack.yaml"
    assert main(["build", str(spec), "--out", str(tmp_path / "out"), "--hosts", str(docker_hosts),
                 "--sign-key", str(key), "-q"]) == 0
    with tarfile.open(tmp_path / "out" / "tinycnn-1.0.0-linux-x86_64.tar.gz") as tar:
        envelope = json.load(tar.extractfile("provenance.intoto.json"))
        bom = json.load(tar.extractfile("bom.cdx.json"))
    # the wheels the image was built from, hashed here from the controller's wheelhouse
    monkeypatch.delenv("MODELPACK_CACHE")
    house = _wheelhouse(Environment.load("linux-x86_64"))
    expected = {wheel.name: hashlib.sha256(wheel.read_bytes()).hexdigest()
                for wheel in house.glob("*.whl") if wheel.name.split("-")[0].lower() in ("onnxruntime", "numpy", "onnx")}
    assert len(expected) == 3
    statement = json.loads(base64.b64decode(envelope["payload"]))
    resolved = {d["name"]: d.get("digest", {}).get("sha256")
                for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert {name: resolved.get(name) for name in expected} == expected
    libraries = {c["name"].lower(): c for c in bom["components"] if c["type"] == "library"}
    for wheel, sha in expected.items():
        component = libraries[wheel.split("-")[0].lower()]
        assert component["hashes"] == [{"alg": "SHA-256", "content": sha}]
        assert {"name": "modelpack:wheel", "value": wheel} in component["properties"]


def test_two_selection_jobs_on_one_engine_take_turns_benchmarking_the_other_paused(
        docker_client, docker_hosts, write_spec, tmp_path):
    """dock-a and dock-b are one engine: its benchmark lease (a network only one
    controller can create) lets one job time at a time, and `docker pause` freezes the
    other job's container meanwhile; nothing of either is left afterwards."""
    from orchestrator.transports.docker import LEASE

    before = {c.id for c in labelled(docker_client)}
    two_jobs_take_turns(write_spec, tmp_path, docker_hosts)
    assert docker_client.containers.list(all=True, filters={"name": f"^/{LEASE}$"}) == [], "the lease is given back"
    assert {c.id for c in labelled(docker_client)} == before


def test_two_controllers_on_one_engine_take_turns_and_pause_each_others_jobs(
        docker_client, docker_hosts, write_spec, tmp_path):
    """Two `modelpack build` processes share one engine: the engine-wide lease makes them
    time one at a time, and the first to time pauses the other controller's build
    container (found by its workspace label); every container is unpaused and gone after."""
    from orchestrator.transports.docker import LEASE

    before = {c.id for c in labelled(docker_client)}
    hosts = tmp_path / "one.yaml"
    hosts.write_text(docker_hosts.read_text().split("  - {name: dock-b")[0])
    assert "dock-a" in hosts.read_text() and "dock-b" not in hosts.read_text()
    two_controllers_take_turns(write_spec, tmp_path, hosts)
    assert docker_client.containers.list(all=True, filters={"name": f"^/{LEASE}$"}) == []
    assert {c.id for c in labelled(docker_client)} == before


def test_a_broken_lease_resumes_what_its_dead_holder_paused(docker_client, docker_hosts, tmp_path):
    """A controller killed while it held the lease leaves other jobs paused; the next one
    to take the lease breaks it (its owner is gone) and unpauses them."""
    from orchestrator.transports.docker import LABEL as LABEL_, LEASE, OWNER, WORKSPACE

    transport = DockerTransport(load_inventory(docker_hosts).hosts[0], images=IMAGES)
    workspace = transport.open("linux-x86_64", {"org.modelpack.run": "lease-test"}, lifetime=120)
    try:
        workspace.pause()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait(timeout=60)
        docker_client.containers.create(workspace._image, command=["true"], name=LEASE,
                                        labels={LABEL_: "1", OWNER: f"{socket.gethostname()}:{dead.pid}"})
        container = docker_client.containers.get(workspace.container_id)
        assert container.status == "paused" and container.labels[WORKSPACE] == "1"
        with transport.benchmark_lease("next"):
            container.reload()
            assert container.status == "running"
        assert docker_client.containers.list(all=True, filters={"name": f"^/{LEASE}$"}) == []
    finally:
        workspace.close()


def test_second_network_with_user_samples_in_docker(capsys, docker_client, docker_hosts, write_spec, tmp_path):
    model = save(make_two_tower(), tmp_path / "two_tower.onnx")
    spec = write_spec(model=model, name="two-tower", samples="s.npz", tolerance={"atol": 1e-6, "rtol": 1e-5})
    rng = np.random.default_rng(5)
    np.savez(spec.parent / "s.npz", **{"token_ids:0": rng.integers(0, 50, (4, 9)).astype(np.int64),
                                      "features/dense": rng.standard_normal((4, 8)).astype(np.float32)})
    assert main(["build", str(spec), "--out", str(tmp_path / "d"), "--hosts", str(docker_hosts)]) == 0
    out = capsys.readouterr().out
    assert "built   two-tower/linux-x86_64" in out


def _scheduler(spec_path: Path, hosts: Path, out: Path, timeout: float = 600.0, copies: int = 1) -> Scheduler:
    inventory = load_inventory(hosts)
    base = load_spec(spec_path)
    jobs = plan([base] if copies == 1 else renamed_specs(base, copies))
    transports = {h.name: DockerTransport(h, IMAGES) for h in inventory.hosts}
    return Scheduler(jobs, {j.id: inventory.hosts for j in jobs}, transports, out, staging_dir(out),
                     run_labels={f"{LABEL}.run": f"test-{os.getpid()}-{time.monotonic_ns()}"},
                     timeouts=StageTimeouts(package=timeout))


def test_container_killed_mid_job_is_retried_on_another_host(docker_client, tmp_path):
    hosts = tmp_path / "three.yaml"
    hosts.write_text("hosts:\n" + "".join(
        f"  - {{name: dock-{n}, transport: docker, targets: [linux-x86_64], slots: 1}}\n" for n in "abc"))
    scheduler = _scheduler(REPO / "examples" / "tinycnn" / "modelpack.yaml", hosts, tmp_path / "out", copies=3)
    run = scheduler._labels[f"{LABEL}.run"]
    killed: list[tuple[str, str]] = []
    lock = threading.Lock()

    class KillOnePackager:
        def job_update(self, record, host, stage):
            with lock:
                if not stage.startswith("package: ") or killed:
                    return
                for container in labelled(docker_client, run):
                    if container.labels.get(f"{LABEL}.job") == record.job.id:
                        container.kill()
                        killed.append((record.job.id, host))

    scheduler.events = KillOnePackager()
    records = scheduler.run()
    assert killed, "the test must have killed a build container"
    assert [r.status for r in records] == ["built"] * 3, [r.reason for r in records]
    [victim] = [r for r in records if r.job.id == killed[0][0]]
    assert [a.status for a in victim.attempts] == ["infrastructure", "ok"]
    assert victim.attempts[0].host == killed[0][1] != victim.attempts[1].host
    assert "died" in victim.attempts[0].reason
    assert all(len(r.attempts) == 1 for r in records if r is not victim)
    assert labelled(docker_client, run) == []


def test_hung_packager_is_killed_at_the_timeout_and_cleaned_up(docker_client, tmp_path):
    hosts = tmp_path / "one.yaml"
    hosts.write_text("hosts:\n  - {name: only, transport: docker, targets: [linux-x86_64]}\n")
    scheduler = _scheduler(REPO / "examples" / "tinycnn" / "modelpack.yaml", hosts, tmp_path / "out", timeout=0.3)
    run = scheduler._labels[f"{LABEL}.run"]
    started = time.monotonic()
    [record] = scheduler.run()
    assert time.monotonic() - started < 20
    assert record.status == "failed" and record.failure == "infrastructure"
    assert "exceeded its 0.3 s limit" in record.reason
    assert labelled(docker_client, run) == []
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _until_packaging(proc) -> list[str]:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "stage=package" in line:
            break
    return seen


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_removes_containers_and_staging_and_exits_128_plus_it(docker_client, docker_hosts, tmp_path,
                                                                        signum, code):
    # CI cancels with SIGTERM (GitLab, Jenkins, Buildkite) or SIGINT; a closed terminal sends SIGHUP
    proc = spawn_modelpack("build", str(REPO / "examples/tinycnn/modelpack.yaml"), "--out", str(tmp_path / "out"),
                           "--hosts", str(docker_hosts), "--no-cache", cwd=REPO)
    seen = _until_packaging(proc)
    assert labelled(docker_client), "a build container should be running now"
    started = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=15) == code, "".join(seen) + proc.stdout.read()
    assert time.monotonic() - started < 10
    while labelled(docker_client) and time.monotonic() < started + 10:
        time.sleep(0.2)
    assert labelled(docker_client) == []
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not list(tmp_path.glob(".out.modelpack-*")), "staging must be removed"


def test_started_with_sigint_ignored_it_keeps_ignoring_it_and_sigterm_still_cancels(docker_client, docker_hosts,
                                                                                     tmp_path):
    proc = spawn_modelpack("build", str(REPO / "examples/tinycnn/modelpack.yaml"), "--out", str(tmp_path / "out"),
                           "--hosts", str(docker_hosts), "--no-cache", cwd=REPO, ignore_sigint=True)
    seen = _until_packaging(proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, "SIGINT ignored at start stays ignored (POSIX): " + "".join(seen)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 143
    assert not list(tmp_path.glob(".out.modelpack-*"))


def test_a_killed_controllers_container_ends_within_its_lifetime(docker_client, docker_hosts, tmp_path):
    limits = ["--connect-timeout", "5", "--push-timeout", "5", "--timeout", "5", "--pull-timeout", "5"]
    proc = spawn_modelpack("build", str(REPO / "examples/tinycnn/modelpack.yaml"), "--out", str(tmp_path / "out"),
                           "--hosts", str(docker_hosts), "--no-cache", *limits, cwd=REPO)
    _until_packaging(proc)
    [container] = docker_client.containers.list(all=True, filters={"label": f"{LABEL}.workspace"})
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait(timeout=10)
    lifetime = 4 * 5 + LIFETIME_MARGIN
    deadline = time.monotonic() + lifetime + 15
    while labelled(docker_client) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert labelled(docker_client) == [], f"container {container.short_id} outlived its {lifetime:g} s lifetime"


@pytest.fixture
def workspace(docker_client):
    transport = DockerTransport(Host(name="raw", transport="docker", targets=["linux-x86_64"]), IMAGES)
    with transport.open("linux-x86_64", {f"{LABEL}.run": f"raw-{os.getpid()}"}) as ws:
        yield ws


def test_argv_reaches_the_container_byte_exact_without_a_shell(workspace):
    nasty = "a b;$(touch /tmp/pwned) `id` 'q' \"dq\" %PATH% & | > \n é ✓"
    lines: list[str] = []
    code = workspace.run(["python", "-c", "import sys; sys.stdout.write(repr(sys.argv[1]))", nasty],
                         {"X": "$(id)"}, 30, lines.append)
    assert code == 0 and lines == [repr(nasty)]
    assert workspace.run(["test", "-e", "/tmp/pwned"], {}, 30, lines.append) == 1
    assert workspace.run(["sh", "-c", "exit 7"], {}, 30, lines.append) == 7


def test_large_output_streams_without_deadlock(workspace):
    count = [0]

    def sink(line: str) -> None:
        count[0] += 1

    code = workspace.run(["python", "-c", "import sys\nfor i in range(200000): print('x' * 60, i)\n"
                          "sys.stderr.write('done\\n')"], {}, 120, sink)
    assert code == 0 and count[0] == 200001


def test_hostile_file_from_the_host_is_refused(workspace, tmp_path):
    workspace.run(["sh", "-c", "mkdir -p out && ln -s /etc/passwd out/pkg.tar.gz"], {}, 30, lambda _: None)
    with pytest.raises(TransportError, match="links are not allowed"):
        workspace.pull("out/pkg.tar.gz", tmp_path / "pkg.tar.gz", 1 << 20)
    assert not (tmp_path / "pkg.tar.gz").exists()


def test_missing_image_is_explained_by_hosts_check(capsys, docker_client, tmp_path):
    hosts = tmp_path / "h.yaml"
    hosts.write_text("hosts:\n  - {name: stale, transport: docker, targets: [linux-x86_64], image: 'modelpack/none:0'}\n")
    assert main(["hosts", "check", "--hosts", str(hosts)]) == 1
    out = capsys.readouterr().out
    assert "FAIL stale" in out and "modelpack/none:0 is missing" in out


def test_a_missing_build_image_is_built_when_a_job_first_needs_it_with_a_progress_line(docker_client):
    """A first run builds the images its jobs use, and only those (#17: the demo waited
    ten minutes for an arm64 image it never used). The sshd test environment is built on
    the x86_64 one, so removing and rebuilding it takes seconds."""
    tag = image_tag("sshd-test")
    if any(c.image.tags and tag in c.image.tags for c in docker_client.containers.list(all=True)):
        pytest.skip(f"{tag} is in use")
    docker_client.images.remove(tag)
    lines: list[str] = []
    transport = DockerTransport(Host(name="fresh", transport="docker", targets=["linux-x86_64"]),
                                on_demand(lines.append))
    status = transport.probe("sshd-test")
    assert status.reachable, status.detail
    assert docker_client.images.get(tag)
    assert lines[0].startswith(f"building image {tag} for sshd-test: first use") and lines[1].startswith("built")
    assert transport.probe("sshd-test").reachable and len(lines) == 2  # built once, not per check


def test_containers_of_a_crashed_run_are_reaped_at_start(capsys, docker_client, docker_hosts, tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = docker_client.containers.create(
        image_tag("linux-x86_64"), ["sleep", "infinity"], network_mode="none",
        labels={LABEL: "1", f"{LABEL}.controller": f"{socket.gethostname()}:{dead.pid}", f"{LABEL}.run": "crashed"})
    alive = docker_client.containers.create(
        image_tag("linux-x86_64"), ["sleep", "infinity"], network_mode="none",
        labels={LABEL: "1", f"{LABEL}.controller": f"{socket.gethostname()}:{os.getpid()}", f"{LABEL}.run": "live"})
    try:
        assert main(["build", str(REPO / "examples/tinycnn/modelpack.yaml"), "--out", str(tmp_path / "o"),
                     "--hosts", str(docker_hosts), "--no-cache"]) == 0
        err = capsys.readouterr().err
        assert orphan.short_id in err and "left by an earlier run" in err
        assert labelled(docker_client, "crashed") == []
        assert [c.id for c in labelled(docker_client, "live")] == [alive.id], "a live run's containers stay"
    finally:
        alive.remove(force=True)


def test_a_job_that_outgrows_the_container_memory_limit_fails_saying_so(capsys, docker_client, write_spec, tmp_path):
    """Build containers have a memory limit (hosts.yaml memory_gb, else a share of the
    engine's memory): a job that outgrows it is a package failure that says so, not a
    host failure to retry elsewhere, and the container is gone."""
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("hosts:\n  - {name: small, transport: docker, targets: [linux-x86_64], memory_gb: 0.06}\n")
    before = {c.id for c in labelled(docker_client)}
    spec = write_spec()
    code = main(["build", str(spec), "--out", str(tmp_path / "out"), "--hosts", str(hosts), "--no-cache",
                 "--model", "tinycnn", "--json", str(tmp_path / "s.json")])
    output = capsys.readouterr()
    job = json.loads((tmp_path / "s.json").read_text())["jobs"][0]
    assert code == 1, output.err
    assert job["status"] == "failed" and job["failure"] == "package", job
    assert "out of memory" in job["reason"] and "0.06 GiB on small" in job["reason"], job["reason"]
    assert len(job["attempts"]) == 1, "not retried elsewhere: the same limit would kill it again"
    assert {c.id for c in labelled(docker_client)} == before
