"""bellm._io: atomic files and folders keep the process umask's permissions and never leave partial output."""

from __future__ import annotations

import os
import stat

import pytest

from bellm import _io
from bellm._io import atomic_path, atomic_write_json, atomic_write_text


def atomic_dir(target):
    return _io.atomic_dir(target)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_permissions(tmp_path, umask_022):
    """On the previous main every file the atomic writer made came out 0600."""
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"a": 1})
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"\0")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inner.txt").write_text("y")
    assert [_mode(tmp_path / n) for n in ("a.txt", "b.json", "c.bin")] == [0o644] * 3
    assert _mode(tmp_path / "d") == 0o755
    os.umask(0o077)
    atomic_write_text(tmp_path / "private.txt", "x")
    assert _mode(tmp_path / "private.txt") == 0o600


def test_atomic_dir_leaves_nothing_on_failure_and_refuses_others_folders(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "f").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_dir(tmp_path / "theirs"):
            pytest.fail("must refuse before the body runs")
    assert (tmp_path / "theirs" / "f").read_text() == "keep"
    with atomic_dir(tmp_path / "a" / "b") as tmp:  # missing parents are made
        (tmp / "f").write_text("z")
    assert (tmp_path / "a" / "b" / "f").read_text() == "z"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]
