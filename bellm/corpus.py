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
  complete. ``run.json`` records the settings (a rerun with different ones is refused); ``index.json`` lists
  the shards once the run ends. :func:`load_embeddings` reads them back in row order.
- resume: a rerun skips every shard already on disk; a ``kill -9`` loses at most the shards being encoded and
  never duplicates a row (the shards are fixed row ranges).
- ranks: with ``RANK``/``WORLD_SIZE`` set (``torchrun --nproc-per-node N -m bellm encode ...``), rank ``r``
  encodes shards ``i`` with ``i % WORLD_SIZE == r``; the shard files are exactly the single-process ones.
  Under torchrun the ranks meet at a gloo barrier at the end and rank 0 writes ``index.json``; without a
  rendezvous (``MASTER_ADDR`` unset) each rank writes it from what is on disk and the last to finish sees the
  whole run.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bellm._io import atomic_path, atomic_write_json

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
        raise ValueError(
            f"input {str(path)!r}: unsupported file type {kind or '(none)'!r}; use one of "
            f"{', '.join(SUFFIXES)} (optionally .gz)"
        )
    return kind


def _open_text(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_rows(path: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    """Stream the texts of ``path`` in order (see the module docstring for the formats).

    Raises FileNotFoundError, ValueError naming the file and line of a bad row (invalid JSON, missing field,
    non-string text, a TSV row without the column).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    kind = _kind(path)
    with _open_text(path) as f:
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
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(obj, dict) or text_field not in obj:
                    keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
                    raise ValueError(
                        f"{path}:{lineno}: no {text_field!r} field (found: {keys}); pass "
                        "text_field= / --field with the right key"
                    )
                text = obj[text_field]
                if not isinstance(text, str):
                    raise ValueError(
                        f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, not a string"
                    )
                yield text
        else:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                return
            if text_field not in header:
                raise ValueError(
                    f"{path}: no column {text_field!r} in the header (columns: {', '.join(header)}); "
                    "pass text_field= / --field with the right column"
                )
            col = header.index(text_field)
            for lineno, row in enumerate(reader, 2):
                if col >= len(row):
                    raise ValueError(
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


def _fingerprint(path: Path) -> str:
    """sha256 of the file's size and first MiB: cheap, and catches a different input under the same name."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


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
    out = Path(output_dir)
    if not (out / RUN_FILE).is_file():
        raise FileNotFoundError(f"{str(out)!r} holds no encode_corpus output (no {RUN_FILE})")
    run = json.loads((out / RUN_FILE).read_text())
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
        raise ValueError(
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


# ------------------------------------------------------------------------------------------------------ main
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

    Raises (before writing anything): FileNotFoundError for a missing input; ValueError for an unsupported
    file type or format, a bad row, ``shard_size < 1``, or an ``output_dir`` that holds a run with other
    settings.
    """
    from tqdm.auto import tqdm

    path = Path(input)
    out = Path(output_dir)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    rank, world_size = _rank_world(rank, world_size)
    rows = sum(1 for _ in read_rows(path, text_field))  # validates every row before any output exists
    if encoder is None:
        from bellm.encoder import Encoder

        encoder = Encoder.from_pretrained(model, **encoder_kwargs)
    elif encoder_kwargs:
        raise TypeError(f"encoder given: unexpected arguments {', '.join(sorted(encoder_kwargs))}")

    run = {
        "input": str(path.resolve()),
        "input_fingerprint": _fingerprint(path),
        "rows": rows,
        "text_field": text_field,
        "shard_size": shard_size,
        "format": format,
        "dim": int(encoder.dim),
        "normalize_embeddings": bool(normalize_embeddings),
        "encoder": encoder.config_dict(),
        "model": str(getattr(getattr(getattr(encoder, "model", None), "config", None), "_name_or_path", "")),
    }
    if (out / RUN_FILE).is_file():
        previous = json.loads((out / RUN_FILE).read_text())
        diff = [k for k in run if k != "input" and previous.get(k) != run[k]]
        if diff:
            k = diff[0]
            raise ValueError(
                f"{str(out)!r} holds a run with other settings ({k}: {previous.get(k)!r} there, "
                f"{run[k]!r} now); use another output directory or delete it"
            )
    else:
        atomic_write_json(out / RUN_FILE, run)
    num_shards = -(-rows // shard_size)
    mine = [i for i in range(num_shards) if i % world_size == rank]
    for stale in out.glob(".shard-*.tmp"):  # left by a killed run; only this rank's, others may be writing
        try:
            if int(stale.name.split("-")[1].split(".")[0]) % world_size == rank:
                stale.unlink(missing_ok=True)
        except ValueError:
            pass

    def expected_rows(i: int) -> int:
        return min(shard_size, rows - i * shard_size)

    todo = {i for i in mine if _shard_rows(out / _shard_name(i, format), format) != expected_rows(i)}
    my_rows = sum(expected_rows(i) for i in mine)
    done_rows = my_rows - sum(expected_rows(i) for i in todo)
    tokens = seconds = 0.0
    desc = "encode" if world_size == 1 else f"encode rank {rank}/{world_size}"
    with tqdm(total=my_rows, initial=done_rows, unit="row", disable=not show_progress_bar, desc=desc) as bar:
        for i, texts in enumerate(_chunks(read_rows(path, text_field), shard_size)):
            if i not in todo:
                continue
            emb, stats = encoder.encode_with_stats(
                texts,
                batch_size=batch_size,
                max_tokens_per_batch=max_tokens_per_batch,
                normalize=normalize_embeddings,
            )
            _write_shard(out / _shard_name(i, format), emb, i * shard_size, format)
            tokens += stats["tokens"]
            seconds += stats["seconds"]
            bar.update(len(texts))
            bar.set_postfix(tok_s=f"{tokens / max(seconds, 1e-9):,.0f}")
    if _barrier_if_distributed(world_size) and rank != 0:
        return _build_index(out, run)
    index = _build_index(out, run)
    atomic_write_json(out / INDEX_FILE, index)
    return index


def rank_device() -> str:
    """The device of this process: ``cuda:$LOCAL_RANK`` (torchrun's local rank, default 0) when CUDA is
    present, else ``cpu``."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"
