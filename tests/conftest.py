from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.models import TINYCNN


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own package cache, so nothing leaks between tests or into ~."""
    root = tmp_path / "package-cache"
    monkeypatch.setenv("MODELPACK_CACHE", str(root))
    return root


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a spec (and copy the example model) into a fresh folder; returns its path."""

    def write(model: Path | None = TINYCNN, spec_file: str = "modelpack.yaml", raw: str | None = None, **fields) -> Path:
        folder = tmp_path / "spec"
        folder.mkdir(exist_ok=True)
        if model is not None and model.exists():
            shutil.copyfile(model, folder / model.name)
        data = {"name": "tinycnn", "version": "1.0.0", "model": model.name if model else "missing.onnx",
                "targets": ["linux-x86_64"], "compilers": ["onnxruntime"]}
        data.update(fields)
        path = folder / spec_file
        path.write_text(raw if raw is not None else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def tinycnn_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example model packaged once for the session by the local transport, for tests
    that read, tamper with or run a real package."""
    from orchestrator.cli import main

    folder = tmp_path_factory.mktemp("tinycnn-package")
    shutil.copyfile(TINYCNN, folder / "tinycnn.onnx")
    (folder / "modelpack.yaml").write_text("name: tinycnn\nversion: 1.0.0\nmodel: tinycnn.onnx\n"
                                           "targets: [linux-x86_64]\ncompilers: [onnxruntime]\n")
    (folder / "hosts.yaml").write_text("hosts:\n  - name: here\n    transport: local\n    targets: [linux-x86_64]\n")
    assert main(["build", str(folder / "modelpack.yaml"), "--hosts", str(folder / "hosts.yaml"),
                 "--out", str(folder / "dist"), "--no-cache"]) == 0
    return folder / "dist" / "tinycnn-1.0.0-linux-x86_64.tar.gz"


@pytest.fixture
def local_hosts(tmp_path: Path) -> Path:
    """An inventory with only this machine (the local transport)."""
    path = tmp_path / "hosts-local.yaml"
    path.write_text("hosts:\n  - name: here\n    transport: local\n    targets: [linux-x86_64]\n")
    return path


def unavailable(problem: str, required_by: str) -> None:
    """Skip a test whose real environment is missing, or fail it where ``required_by``
    is set to 1 (CI sets MODELPACK_REQUIRE_DOCKER), so a broken setup cannot pass as skips."""
    if os.environ.get(required_by) == "1":
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.fixture
def docker_client():
    """The real Docker engine with the build image present. Skipped when absent, unless
    MODELPACK_REQUIRE_DOCKER=1 (as in CI), where absence is a failure."""
    import docker

    from orchestrator.images import image_tag

    problem = None
    try:
        client = docker.from_env(timeout=10)
        client.ping()
        client.images.get(image_tag("linux-x86_64"))
    except Exception as exc:  # any reason the engine or image is not usable
        problem = f"Docker engine or build image unavailable ({exc}); run scripts/build-images"
    if problem:
        unavailable(problem, "MODELPACK_REQUIRE_DOCKER")
    return client


def _default_signals() -> None:
    """In the child before exec: the default disposition for every signal a run is
    cancelled by. Ignored dispositions survive exec, so a suite started from a
    background job (SIGINT ignored) would otherwise start builds that cannot be
    interrupted."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def spawn_modelpack(*args: str, cwd: Path, ignore_sigint: bool = False):
    """``modelpack ARGS`` as a child process with plain signal dispositions (or, with
    ``ignore_sigint``, SIGINT ignored as a background job of a non-interactive shell
    starts it), its output merged and line-buffered."""
    import signal
    import subprocess
    import sys

    def prepare() -> None:
        _default_signals()
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd, preexec_fn=prepare,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def two_jobs_take_turns(write_spec, tmp_path: Path, hosts: Path, max_rounds: int | None = 3) -> list[dict]:
    """Build two selection jobs (onnxruntime, openvino and MNN) in one run on ``hosts``,
    check that they benchmarked one at a time with the first to time pausing the other,
    and return both manifests' ``selection.benchmark``. Three compilers: both packagers
    are surely running (compiling or gating) when the first one starts timing.
    ``max_rounds`` caps the timing rounds (None: the product's default cap)."""
    import json

    from orchestrator.cli import main
    from orchestrator.runtime.archive import extract

    first = write_spec(compilers=["onnxruntime", "openvino", "mnn"],
                       select={"max_rounds": max_rounds} if max_rounds else {})
    second = tmp_path / "second"
    shutil.copytree(first.parent, second)
    (second / "modelpack.yaml").write_text(first.read_text().replace("name: tinycnn", "name: tinycnn-b"))
    assert main(["build", str(first), str(second / "modelpack.yaml"), "--out", str(tmp_path / "d"),
                 "--hosts", str(hosts), "--no-cache", "-q"]) == 0
    benches = []
    for name in ("tinycnn", "tinycnn-b"):
        extract(tmp_path / "d" / f"{name}-1.0.0-linux-x86_64.tar.gz", tmp_path / name)
        benches.append(json.loads((tmp_path / name / "manifest.json").read_text())["selection"]["benchmark"])
    assert all(b["lease"]["granted"] for b in benches)
    earlier, later = sorted(benches, key=lambda b: b["window"][0])
    assert earlier["window"][1] <= later["window"][0], "the timing windows overlap"
    assert earlier["lease"]["paused"] == 1 and earlier["lease"]["not_pausable"] == 0, earlier["lease"]
    return benches


def two_controllers_take_turns(write_spec, tmp_path: Path, hosts: Path) -> list[dict]:
    """Two controllers (two ``modelpack build`` processes) each build a selection job on
    the one build host in ``hosts`` at the same time; check that they benchmarked one at
    a time and that the first to time paused the other controller's job (the host's own
    lease and labels show it: no controller knows the other), and return both
    manifests' ``selection.benchmark``."""
    import json

    from orchestrator.runtime.archive import extract

    first = write_spec(compilers=["onnxruntime", "openvino", "mnn"], select={"max_rounds": 3})
    second = tmp_path / "second"
    shutil.copytree(first.parent, second)
    (second / "modelpack.yaml").write_text(first.read_text().replace("name: tinycnn", "name: tinycnn-b"))
    children = [spawn_modelpack("build", str(spec), "--out", str(tmp_path / out), "--hosts", str(hosts),
                                "--no-cache", "-q", cwd=tmp_path)
                for spec, out in ((first, "d1"), (second / "modelpack.yaml", "d2"))]
    outputs = [child.communicate(timeout=900)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    benches = []
    for name, out in (("tinycnn", "d1"), ("tinycnn-b", "d2")):
        extract(tmp_path / out / f"{name}-1.0.0-linux-x86_64.tar.gz", tmp_path / name)
        benches.append(json.loads((tmp_path / name / "manifest.json").read_text())["selection"]["benchmark"])
    earlier, later = sorted(benches, key=lambda b: b["window"][0])
    assert earlier["window"][1] <= later["window"][0], "the timing windows overlap"
    assert earlier["lease"]["paused"] == 0 and earlier["lease"]["paused_other_controllers"] == 1, earlier["lease"]
    return benches
