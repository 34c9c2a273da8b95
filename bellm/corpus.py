"""Corpus encoding: a large text file in, embedding shards out, resumable, and split across ranks under
torchrun.

``encode_corpus(input, output_dir)`` / ``bellm encode --input corpus.jsonl --output emb/``:

- input: ``.txt`` (one row per line, every line a row, empty lines included), ``.jsonl`` (one JSON object per
  non-blank line; the text is the ``text_field`` key), ``.tsv`` (tab-separated with a header row, no quoting;
  the text is the ``text_field`` column); each optionally ``.gz``. The file is read twice, streaming: once to
  validate and count rows (a bad row raises before anything is written), once to encode.
- output: row ``r`` of the input is row ``r % shard_size`` of shard ``r // shard_size``. Shard ``i`` is
  ``shard-{i:05d}.safetensors`` (tensor ``embeddings`` ``(rows, dim)`` float32, metadata ``start``/``rows``)
  or ``shard-{i:05d}.npy``; each is written atomically (temp file + fsync + rename), so a file that exists is
  complete. ``run.json`` records everything the embeddings depend on (:mod:`bellm.run_record`: the model's
  and adapter's file hashes, dtype, device type, encoder settings, normalisation, the input's hash, the bellm
  version); ``index.json`` lists the shards once the run ends. :func:`load_embeddings` reads them back in row
  order.
- resume: a rerun skips every shard already on disk; a ``kill -9`` loses at most the shards being encoded and
  never duplicates a row (the shards are fixed row ranges). A rerun whose set-up differs in any recorded field
  is refused before the model loads, naming the field; shard files in a folder without ``run.json`` are never
  taken as finished work (refused: bellm cannot tell what wrote them).
- ranks: with ``RANK``/``WORLD_SIZE`` set (``torchrun --nproc-per-node N -m bellm encode ...``), rank ``r``
  encodes shards ``i`` with ``i % WORLD_SIZE == r``; the shard files are exactly the single-process ones.
  Under torchrun the ranks meet at a gloo barrier at the end and rank 0 writes ``index.json``; without a
  rendezvous (``MASTER_ADDR`` unset) each rank writes it from what is on disk and the last to finish sees the
  whole run.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bellm._io import atomic_path, atomic_write_json, check_output_dir, open_text, text_errors
from bellm.errors import DataFileError, UsageError
from bellm.run_record import check_same_run

if TYPE_CHECKING:
    import torch

__all__ = ["encode_corpus", "load_embeddings", "read_rows", "rank_device"]

FORMATS = ("safetensors", "npy")
SUFFIXES = (".txt", ".jsonl", ".tsv")
RUN_FILE = "run.json"
INDEX_FILE = "index.json"


# ------------------------------------------------------------------------------------------------------
# reading
def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    kind = suffixes[-1] if suffixes else ""
    if kind not in SUFFIXES:
        raise UsageError(
            f"input {str(path)!r}: unsupported file type {kind or '(none)'!r}; use one of "
            f"{', '.join(SUFFIXES)} (optionally .gz)"
        )
    return kind


def read_rows(path: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    """Stream the texts of ``path`` in order (see the module docstring for the formats).

    Raises FileNotFoundError, ValueError naming the file and line of a bad row (invalid JSON, missing field,
    non-string text, a TSV row without the column, invalid UTF-8) or a damaged / truncated ``.gz``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    kind = _kind(path)
    with text_errors(path), open_text(path) as f:
        if kind == ".txt":
            for line in f:
                yield line.rstrip("\r\n")
        elif kind == ".jsonl":
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataFileError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(obj, dict) or text_field not in obj:
                    keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
                    raise DataFileError(
                        f"{path}:{lineno}: no {text_field!r} field (found: {keys}); pass "
                        "text_field= / --field with the right key"
                    )
                text = obj[text_field]
                if not isinstance(text, str):
                    raise DataFileError(
                        f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, not a string"
                    )
                yield text
        else:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                return
            if text_field not in header:
                raise DataFileError(
                    f"{path}: no column {text_field!r} in the header (columns: {', '.join(header)}); "
                    "pass text_field= / --field with the right column"
                )
            col = header.index(text_field)
            for lineno, row in enumerate(reader, 2):
                if col >= len(row):
                    raise DataFileError(
                        f"{path}:{lineno}: {len(row)} columns, no {text_field!r} (column {col + 1})"
                    )
                yield row[col]


def _chunks(rows: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ------------------------------------------------------------------------------------------------------
# shards
def _shard_name(i: int, fmt: str) -> str:
    return f"shard-{i:05d}.{fmt}"


def _shard_rows(path: Path, fmt: str) -> int | None:
    """Rows in a finished shard file, or None when it is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        if fmt == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return int(f.get_slice("embeddings").get_shape()[0])
        return int(np.load(path, mmap_mode="r").shape[0])
    except Exception:  # noqa: BLE001 - a corrupt file counts as not done (it is re-encoded and replaced)
        return None


def _write_shard(path: Path, emb: torch.Tensor, start: int, fmt: str) -> None:
    import torch

    emb = emb.detach().to("cpu", torch.float32).contiguous()
    with atomic_path(path) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(
                {"embeddings": emb}, str(tmp), metadata={"start": str(start), "rows": str(emb.shape[0])}
            )
        else:
            with open(tmp, "wb") as f:
                np.save(f, emb.numpy())


def _read_shard(path: Path, fmt: str) -> np.ndarray:
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))["embeddings"]
    return np.load(path)


def _build_index(out: Path, run: dict) -> dict:
    fmt, size, rows = run["format"], run["shard_size"], run["rows"]
    num_shards = -(-rows // size)
    shards, missing = [], []
    for i in range(num_shards):
        n = _shard_rows(out / _shard_name(i, fmt), fmt)
        expected = min(size, rows - i * size)
        if n == expected:
            shards.append({"file": _shard_name(i, fmt), "start": i * size, "rows": n})
        else:
            missing.append(i)
    return {
        "format": fmt,
        "dim": run["dim"],
        "rows": rows,
        "shard_size": size,
        "num_shards": num_shards,
        "complete": not missing,
        "missing_shards": missing,
        "shards": shards,
    }


def load_embeddings(output_dir: str | os.PathLike) -> np.ndarray:
    """All rows of a finished :func:`encode_corpus` output, ``(rows, dim)`` float32 in input order.

    Raises FileNotFoundError when ``run.json`` is absent, ValueError naming the missing shards of an
    unfinished run.
    """
    from bellm.run_record import read_record

    out = Path(output_dir)
    if not (out / RUN_FILE).is_file():
        raise FileNotFoundError(f"{str(out)!r} holds no encode_corpus output (no {RUN_FILE})")
    run = read_record(out / RUN_FILE)
    index = _build_index(out, run)
    if not index["complete"]:
        raise ValueError(
            f"{str(out)!r} is unfinished: shards {index['missing_shards'][:10]} missing; rerun the "
            "same encode to finish it"
        )
    parts = [_read_shard(out / s["file"], run["format"]) for s in index["shards"]]
    return np.concatenate(parts) if parts else np.zeros((0, run["dim"]), np.float32)


# ------------------------------------------------------------------------------------------------------ ranks
def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(
            f"rank {rank} / world_size {world_size}: need world_size >= 1 and 0 <= rank < world_size"
        )
    return rank, world_size


def _barrier_if_distributed(world_size: int) -> bool:
    """Meet the other ranks (gloo) when launched by torchrun; False when there is no rendezvous to join."""
    if world_size == 1 or "MASTER_ADDR" not in os.environ:
        return False
    import torch.distributed as dist

    if not dist.is_available():
        return False
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo")
    dist.barrier()
    if owned:
        dist.destroy_process_group()
    return True


# ------------------------------------------------------------------------------------------------------ run record
def _setup_record(path, text_field, shard_size, fmt, normalize, encoder, model, encoder_kwargs) -> dict:
    """Everything the shards depend on, computed before any model is loaded (see :mod:`bellm.run_record`)."""
    import bellm
    from bellm.run_record import adapter_identity, input_identity, model_identity, weights_sha256

    record = {
        "bellm_version": bellm.__version__,
        "input": input_identity(path),
        "text_field": text_field,
        "shard_size": shard_size,
        "format": fmt,
        "normalize_embeddings": bool(normalize),
    }
    if encoder is not None:  # already in memory: hash its weights
        hf_model = getattr(encoder, "model", None)
        param = next(hf_model.parameters(), None) if hf_model is not None else None
        record.update(
            model={"weights_sha256": weights_sha256(hf_model) if hf_model is not None else None},
            dtype=str(param.dtype) if param is not None else None,
            device_type=param.device.type if param is not None else None,
            encoder=encoder.config_dict(),
        )
        return record
    import torch

    from bellm.common import check_pooling, resolve_prompt
    from bellm.models import resolve_dtype

    kw = dict(encoder_kwargs)
    device = kw.get("device")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    pooling = check_pooling(kw.get("pooling", "last"))
    from_layer = kw.get("from_layer")
    record.update(
        model=model_identity(model, kw.get("gguf_file")),
        adapter=adapter_identity(kw.get("adapter")),
        dtype=str(resolve_dtype(kw.get("dtype"), device)),
        device_type=device.type,
        encoder={
            "from_layer": int(from_layer) if from_layer is not None else None,
            "pooling": pooling,
            "prompt": resolve_prompt(kw.get("prompt"), pooling),
            "billm_compat": bool(kw.get("billm_compat", False)),
            "max_length": kw.get("max_length"),
            "exclude_prompt": bool(kw.get("exclude_prompt", False)),
        },
    )
    return record


def _previous_run(out: Path) -> dict | None:
    """The run record in ``out``, or None for a folder without one (and without shards: shards without a
    record are refused, as are records from an older bellm that lack the set-up)."""
    from bellm.run_record import CorruptRecordError, read_record

    if (out / RUN_FILE).is_file():
        previous = read_record(out / RUN_FILE)
        if not isinstance(previous.get("setup"), dict):
            raise CorruptRecordError(
                f"{out / RUN_FILE} records no set-up (written by an older bellm, or not by bellm), so a resume "
                "could mix two set-ups; write to a new output folder"
            )
        return previous
    shards = sorted(p.name for fmt in FORMATS for p in out.glob(f"shard-*.{fmt}")) if out.is_dir() else []
    if shards:
        raise UsageError(
            f"{str(out)!r} holds shard files ({', '.join(shards[:3])}{', ...' if len(shards) > 3 else ''}) "
            f"but no {RUN_FILE}, so bellm cannot tell which set-up wrote them and will not treat them as "
            "finished; write to a new output folder"
        )
    return None


_NEW_FOLDER = "write to a new output folder (--output) to encode with this set-up"


def _check_before_load(
    path: Path, out: Path, text_field, shard_size, fmt, normalize, encoder, model, encoder_kwargs
) -> tuple[int, dict, dict | None]:
    """Every check that needs no model: arguments, the output folder, every input row, and the recorded set-up
    of a previous run. Returns ``(rows, set-up record, previous run record or None)``."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise UsageError(f"shard_size must be an int >= 1, got {shard_size!r}")
    check_output_dir("output", out)
    rows = sum(1 for _ in read_rows(path, text_field))  # validates every row before any output exists
    setup = _setup_record(path, text_field, shard_size, fmt, normalize, encoder, model, encoder_kwargs)
    previous = _previous_run(out)
    if previous is not None:
        check_same_run(previous["setup"], setup, where=str(out / RUN_FILE), fix=_NEW_FOLDER)
    return rows, setup, previous


def _check_or_write_run(
    out: Path, previous, setup: dict, rows: int, shard_size: int, fmt: str, encoder
) -> dict:
    """Write ``run.json`` (the set-up, plus what the loaded encoder resolved: dim and settings), or check the one
    already there against it (:class:`bellm.run_record.RunMismatchError` naming the first difference)."""
    run = {
        "setup": setup,
        "rows": rows,
        "shard_size": shard_size,
        "format": fmt,
        "dim": int(encoder.dim),
        "encoder": encoder.config_dict(),  # the settings as resolved by the loaded model
    }
    if previous is not None:
        check_same_run(previous, run, where=str(out / RUN_FILE), fix=_NEW_FOLDER)
    else:
        atomic_write_json(out / RUN_FILE, run)
    return run


# ------------------------------------------------------------------------------------------------------ main
def _remove_stale_temp_files(out: Path, rank: int, world_size: int) -> None:
    """Delete the temporary shard files a killed run left; only this rank's, other ranks may be writing."""
    for stale in out.glob(".shard-*.tmp"):
        try:
            if int(stale.name.split("-")[1].split(".")[0]) % world_size == rank:
                stale.unlink(missing_ok=True)
        except ValueError:
            pass


def _encode_shards(
    encoder,
    chunks: Iterator[list[str]],
    todo: set[int],
    out: Path,
    shard_size: int,
    format: str,
    bar,
    **kwargs,
) -> None:
    """Encode and write every shard in ``todo`` (``chunks`` yields every shard's texts in order); the progress
    bar shows rows and tokens per second. ``kwargs`` go to ``encoder.encode_with_stats``."""
    tokens = seconds = 0.0
    for i, texts in enumerate(chunks):
        if i not in todo:
            continue
        emb, stats = encoder.encode_with_stats(texts, **kwargs)
        _write_shard(out / _shard_name(i, format), emb, i * shard_size, format)
        tokens += stats["tokens"]
        seconds += stats["seconds"]
        bar.update(len(texts))
        bar.set_postfix(tok_s=f"{tokens / max(seconds, 1e-9):,.0f}")


def encode_corpus(
    input: str | os.PathLike,
    output_dir: str | os.PathLike,
    encoder=None,
    *,
    model: str | os.PathLike | None = None,
    text_field: str = "text",
    shard_size: int = 10_000,
    format: str = "safetensors",
    batch_size: int | None = None,
    max_tokens_per_batch: int | None = None,
    normalize_embeddings: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    show_progress_bar: bool = True,
    **encoder_kwargs,
) -> dict:
    """Encode every row of ``input`` into shards under ``output_dir``; returns the index (see the module
    docstring).

    ``encoder``: a :class:`bellm.Encoder` (or anything with ``encode_with_stats``, ``config_dict`` and
    ``dim``); when None one is loaded with ``Encoder.from_pretrained(model, **encoder_kwargs)``
    (``model=None``: SmolLM2). ``rank``/``world_size`` default to the ``RANK``/``WORLD_SIZE`` environment
    variables.

    Raises (before writing anything, and before loading a model): FileNotFoundError for a missing input or
    model; ValueError for an unsupported file type or format, a bad row, invalid UTF-8, a damaged ``.gz``,
    ``shard_size < 1``, an ``output_dir`` that is a file or not writable, holds shards without ``run.json``,
    or holds a run with another set-up (:class:`bellm.run_record.RunMismatchError`, naming the field) or a
    damaged record (:class:`bellm.run_record.CorruptRecordError`).
    """
    from tqdm.auto import tqdm

    path = Path(input)
    out = Path(output_dir)
    rank, world_size = _rank_world(rank, world_size)
    if encoder is not None and encoder_kwargs:
        raise TypeError(f"encoder given: unexpected arguments {', '.join(sorted(encoder_kwargs))}")
    rows, setup, previous = _check_before_load(
        path, out, text_field, shard_size, format, normalize_embeddings, encoder, model, encoder_kwargs
    )
    if encoder is None:  # the expensive part, only after every check
        from bellm.encoder import Encoder

        encoder = Encoder.from_pretrained(model, **encoder_kwargs)
    run = _check_or_write_run(out, previous, setup, rows, shard_size, format, encoder)
    num_shards = -(-rows // shard_size)
    mine = [i for i in range(num_shards) if i % world_size == rank]
    _remove_stale_temp_files(out, rank, world_size)

    def expected_rows(i: int) -> int:
        return min(shard_size, rows - i * shard_size)

    todo = {i for i in mine if _shard_rows(out / _shard_name(i, format), format) != expected_rows(i)}
    my_rows = sum(expected_rows(i) for i in mine)
    desc = "encode" if world_size == 1 else f"encode rank {rank}/{world_size}"
    with tqdm(
        total=my_rows,
        initial=my_rows - sum(expected_rows(i) for i in todo),
        unit="row",
        disable=not show_progress_bar,
        desc=desc,
    ) as bar:
        _encode_shards(
            encoder,
            _chunks(read_rows(path, text_field), shard_size),
            todo,
            out,
            shard_size,
            format,
            bar,
            batch_size=batch_size,
            max_tokens_per_batch=max_tokens_per_batch,
            normalize=normalize_embeddings,
        )
    if _barrier_if_distributed(world_size) and rank != 0:
        return _build_index(out, run)
    index = _build_index(out, run)
    atomic_write_json(out / INDEX_FILE, index)
    return index


def rank_device() -> str:
    """The device of this process: ``cuda:$LOCAL_RANK`` (torchrun's local rank, default 0) when CUDA is
    present, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"
