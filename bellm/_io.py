"""File helpers: atomic writes and opening (optionally gzipped) UTF-8 text.

Atomic writes go to a temporary file in the same directory, are fsynced, then renamed over the target: a reader
(or a resumed run after ``kill -9``) sees either the old file or the complete new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "open_text"]


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is fsynced and renamed onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: str | os.PathLike, obj) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def open_text(path: str | os.PathLike):
    """Open ``path`` for reading UTF-8 text, through gzip when its name ends in ``.gz`` (any case); newlines are
    left as they are (``newline=""``, as the csv module wants)."""
    path = Path(path)
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")
