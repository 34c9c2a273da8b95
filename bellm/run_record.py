"""Run records: what determines a long job's output, written beside the output and checked before a resume.

A corpus encode (``run.json``) and a training run (``run_config.json``) record everything their output depends on:
the model (resolved path, GGUF file name, and the sha256 of every file the model is loaded from), the adapter
(path and sha256 of its files), the dtype and device type the weights run in, the encoder settings as requested
(pooling, prompt, from_layer, billm_compat, max_length, normalisation; a setting left to its default is
determined by the hashed model and adapter files), the input files (resolved path, size and sha256 of the whole
file) and the bellm version. Weights are hashed in full (sha256, about 1 s per GB), not judged by size and mtime:
a copied or moved model or input with the same content resumes, a changed one is refused.

:func:`check_same_run` compares a new record with the one on disk before any model is loaded and raises
:class:`RunMismatchError` naming the first differing field, both values and the way out (a new output folder).
Paths are recorded resolved, for the reader; identity is by content (a run moved or copied elsewhere, or a model
moved, still resumes). :func:`read_record` turns a damaged record into a one-line :class:`CorruptRecordError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from bellm.errors import DataFileError, UsageError

__all__ = [
    "CorruptRecordError",
    "RunMismatchError",
    "adapter_identity",
    "check_same_run",
    "file_sha256",
    "input_identity",
    "model_identity",
    "read_record",
    "weights_sha256",
]

# files in a model directory that do not change what the model computes
_IRRELEVANT_PREFIXES = ("readme", "license", "licence", "notice", ".")
_IRRELEVANT_SUFFIXES = (".md", ".gguf", ".lock")


class RunMismatchError(UsageError):
    """A resume (or rerun) whose set-up differs from the one recorded with the output (a usage error: the
    fix is another output folder)."""


class CorruptRecordError(DataFileError):
    """A run record (or another file bellm wrote, such as a checkpoint) that cannot be read."""


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of the whole file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def _files_identity(paths: Iterable[Path]) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(paths)}


def _model_files(directory: Path) -> list[Path]:
    return [
        p
        for p in directory.iterdir()
        if p.is_file()
        and not p.name.lower().startswith(_IRRELEVANT_PREFIXES)
        and not p.name.lower().endswith(_IRRELEVANT_SUFFIXES)
    ]


def model_identity(model: str | os.PathLike | None, gguf_file: str | None = None) -> dict:
    """``{"path", "gguf_file", "files": {name: sha256}}`` of the model files a load would read.

    ``model`` as :func:`bellm.models.load_model_and_tokenizer` takes it: ``None`` (the bundled SmolLM2 GGUF), a
    directory, or a ``.gguf`` file. For a GGUF only that file is hashed (it holds weights, config and
    tokenizer); for a directory every top-level file except read-me / licence files and GGUF files. Raises
    FileNotFoundError for a missing path.
    """
    if model is None:
        from bellm.models import default_model

        directory, gguf_file = default_model()
    else:
        directory = Path(model)
        if directory.suffix == ".gguf" and gguf_file is None:
            directory, gguf_file = directory.parent, directory.name
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model path {str(directory)!r} does not exist; pass a local directory or .gguf"
        )
    if gguf_file is not None:
        files = [directory / gguf_file]
        if not files[0].is_file():
            raise FileNotFoundError(f"GGUF file {str(files[0])!r} does not exist")
    else:
        files = _model_files(directory)
    return {"path": str(directory), "gguf_file": gguf_file, "files": _files_identity(files)}


def adapter_identity(adapter: str | os.PathLike | None) -> dict | None:
    """``{"path", "files": {name: sha256}}`` of a peft adapter directory (every top-level file but read-mes),
    or None. FileNotFoundError for a missing path."""
    if adapter is None:
        return None
    directory = Path(adapter).resolve()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"adapter path {str(directory)!r} does not exist; pass a directory saved by peft"
        )
    files = [p for p in directory.iterdir() if p.is_file() and not p.name.lower().startswith(("readme", "."))]
    return {"path": str(directory), "files": _files_identity(files)}


def input_identity(path: str | os.PathLike) -> dict:
    """``{"path", "size", "sha256"}`` of an input file (the whole file is hashed)."""
    path = Path(path).resolve()
    return {"path": str(path), "size": path.stat().st_size, "sha256": file_sha256(path)}


def weights_sha256(model) -> str:
    """sha256 over a model's state dict in memory (names, dtypes, shapes and bytes, in name order): the
    identity of an already loaded model, for a run given a model object rather than a path."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_record(
    path: str | os.PathLike,
    *,
    what: str = "run record",
    fix: str = "bellm cannot tell what set-up wrote this output, so write to a new output folder",
) -> dict:
    """The JSON object in ``path``; :class:`CorruptRecordError` (one line naming the file, ``what`` it is and
    ``fix``) when it is not valid JSON or not an object."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" (line {err.lineno}, column {err.colno}: {err.msg})" if hasattr(err, "lineno") else ""
        raise CorruptRecordError(f"{path}: damaged {what}, not valid JSON{where}; {fix}") from None
    if not isinstance(record, dict):
        raise CorruptRecordError(
            f"{path}: damaged {what} (a JSON {type(record).__name__}, not an object); {fix}"
        )
    return record


_PATH_KEYS = {"path"}  # recorded for the reader; identity is by content


def _differences(before, now, prefix: str = "") -> Iterable[tuple[str, object, object]]:
    if isinstance(before, dict) and isinstance(now, dict):
        for key in list(before) + [k for k in now if k not in before]:
            if key in _PATH_KEYS:
                continue
            yield from _differences(before.get(key), now.get(key), f"{prefix}.{key}" if prefix else key)
    elif before != now:
        yield prefix, before, now


def check_same_run(recorded: dict, now: dict, *, where: str, fix: str) -> None:
    """Raise :class:`RunMismatchError` when ``now`` differs from ``recorded`` in any field but ``path``.

    The message names the first differing field (dotted, e.g. ``model.files.model.safetensors``), both
    values, ``where`` (the record's file) and ``fix``.
    """
    for field, before, after in _differences(recorded, now):
        raise RunMismatchError(
            f"{where} was written with another set-up ({field}: {_short(before)} there, {_short(after)} "
            f"now); {fix}"
        )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
