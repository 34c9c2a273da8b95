"""Atomic file and folder writes: write to a temporary file (folder) beside the target, then rename it over.

A reader (or a resumed run after ``kill -9``) sees either the old file or the complete new one, never a torn file;
a folder written with :func:`atomic_dir` appears whole or not at all. Files and folders get the process umask's
permissions (as ``open`` and ``mkdir`` give), not the 0600 / 0700 of :mod:`tempfile`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import secrets
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_dir",
    "atomic_write_text",
    "atomic_write_json",
    "check_output_dir",
    "nearest_existing",
    "open_text",
    "text_errors",
]


def _fresh_name(target: Path) -> Path:
    return target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is fsynced and renamed onto ``target``.

    The temporary file is created empty with mode ``0o666`` minus the umask (the mode ``target`` keeps).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp_path = _fresh_name(target)
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``target``; on success it is renamed to ``target``, whole.

    ``target`` must not exist or be an empty folder: FileExistsError otherwise, before anything is written
    (bellm never writes into, or deletes, a folder that holds other files). If the body raises (or the process
    dies) ``target`` is untouched; the temporary ``.<name>.<random>.tmp`` folder is removed on an exception.
    """
    target = Path(target)
    _check_writable_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp_dir = _fresh_name(target)
        try:
            os.mkdir(tmp_dir, 0o777)  # the umask applies
            break
        except FileExistsError:
            continue
    try:
        yield tmp_dir
        _check_writable_target(target)  # still true after the (long) write?
        if target.is_dir():
            target.rmdir()  # empty: nothing of anyone's is lost
        os.rename(tmp_dir, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def _check_writable_target(target: Path) -> None:
    if target.is_dir():
        if any(target.iterdir()):
            raise FileExistsError(
                f"{str(target)!r} already exists and is not empty; save into a new folder (bellm writes a "
                "saved model as a whole folder and never into, or over, one holding other files)"
            )
    elif target.exists() or target.is_symlink():
        raise FileExistsError(f"{str(target)!r} exists and is not a folder; choose another path to save to")


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: str | os.PathLike, obj) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------------------------
# reading text files (optionally gzip-compressed) with one-line errors
# ---------------------------------------------------------------------------------------------------------


def open_text(path: str | os.PathLike):
    """``path`` opened for reading UTF-8 text (``newline=""``), through gzip when its name ends in ``.gz``."""
    if str(path).lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


@contextlib.contextmanager
def text_errors(path: str | os.PathLike, error: type[Exception] | None = None) -> Iterator[None]:
    """Turn what goes wrong while reading ``path`` with :func:`open_text` into one-line ``error`` naming the file:

    invalid UTF-8 (with the line, found by a second pass over the raw bytes), a ``.gz`` file that is not gzip,
    damaged or cut short. ``error`` defaults to :class:`bellm.errors.DataFileError`. Other exceptions pass
    through.
    """
    from bellm.errors import DataFileError

    error = error or DataFileError
    try:
        yield
    except UnicodeDecodeError as err:
        line = _first_undecodable_line(path)
        where = f"{path}:{line}" if line else str(path)
        raise error(
            f"{where}: not valid UTF-8 ({err.reason}, byte 0x{err.object[err.start]:02x}); save the file as "
            "UTF-8 (or fix that line)"
        ) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise error(
            f"{path}: damaged or truncated gzip file ({err}); check the copy (gzip -t) or decompress it and "
            "pass the plain file"
        ) from None


def _first_undecodable_line(path) -> int | None:
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return lineno
    except (OSError, EOFError, zlib.error):
        return None
    return None


# ---------------------------------------------------------------------------------------------------------
# output paths, checked before any work
# ---------------------------------------------------------------------------------------------------------


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_output_dir(flag: str, path: str | os.PathLike) -> None:
    """:class:`bellm.errors.UsageError` (one line naming ``flag`` and ``path``) unless ``path`` is, or can be
    created as, a writable folder: not a file, no file in the way, the nearest existing folder writable."""
    from bellm.errors import UsageError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a file; pass a folder path")
    existing = nearest_existing(p)
    if not existing.is_dir():
        raise UsageError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {str(path)!r}: the folder {str(existing)!r} is not writable; choose another path")
