"""Files the controller writes: reports and summaries get the user's umask (#14)."""

from __future__ import annotations

import os
import stat

import pytest

from orchestrator.storage import cache_root, write_atomic


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask_like_any_other_file(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        write_atomic(tmp_path / "report.html", "<html></html>")
        write_atomic(tmp_path / "out.npz", lambda stream: stream.write(b"\0"))
    finally:
        os.umask(old)
    for name in ("report.html", "out.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz", "report.html"]  # no temporary left


def test_cache_root_follows_modelpack_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("MODELPACK_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "modelpack"
    monkeypatch.setenv("MODELPACK_CACHE", str(tmp_path / "own"))
    assert cache_root() == tmp_path / "own"
