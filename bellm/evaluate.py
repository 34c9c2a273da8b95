"""STS evaluation with the BeLLM / SimCSE / SentEval protocol, and the ``bellm eval`` subcommand.

Protocol (what :func:`evaluate_sts` computes, mirroring SentEval as BeLLM's ``eval_sts.py`` runs it):

- Text: ``sts/senteval_sts.tsv.gz`` of the data directory (:mod:`bellm.sts_data`) by default, i.e. SentEval's
  preprocessed files (STS12-16 and STS-B Moses-tokenized and lowercased, SICK as released); ``source="raw"`` uses the
  original cased text instead. Like SentEval, every sentence is split on whitespace and re-joined with single spaces
  before encoding.
- Score per pair: cosine similarity of the two embeddings (float64; a zero vector gives cosine 0).
- Metric: Spearman rank correlation (``scipy.stats.spearmanr``, average ranks for ties) between cosines and
  gold scores, times 100. STS12-16: all subsets pooled into one list (SentEval's
  ``['all']['spearman']['all']``, which BeLLM reports); STS-B and SICK-R: the ``split`` (default ``test``)
  split. ``average`` is the plain mean over tasks.
- A task whose cosines are constant (e.g. every embedding equal) has an undefined Spearman: ``nan`` in Python,
  ``null`` in JSON, "undefined" in the table; the average is then undefined too.

Each unique sentence is encoded once across all tasks. The encoder is duck-typed: any object whose
``encode(list[str])`` returns an ``(n, dim)`` array in input order (``bellm.Encoder``, a SentenceTransformer,
...).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from bellm.common import format_score, normalize_whitespace
from bellm.sts_data import TASKS, load_sts

__all__ = [
    "evaluate_sts",
    "spearman_cosine",
    "cosine_rows",
    "format_markdown",
    "to_jsonable",
]

_CHUNK = 256  # sentences per encode() call: the unit of the progress bar


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``a`` and ``b`` (both ``(n, dim)``) in float64, ``(n,)``; zero rows give
    0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (n, dim) arrays of the same shape, got {a.shape} and {b.shape}")
    na = np.maximum(np.linalg.norm(a, axis=1), 1e-12)
    nb = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    return np.einsum("ij,ij->i", a, b) / (na * nb)


def spearman_cosine(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float]) -> float:
    """Spearman x 100 between row-wise cosines of ``emb1``/``emb2`` ``(n, dim)`` and ``gold`` ``(n,)``.

    Returns ``nan`` when it is undefined: fewer than 2 pairs, or constant cosines (spread below 1e-9) or gold.
    """
    gold = np.asarray(gold, dtype=np.float64)
    cos = cosine_rows(emb1, emb2)
    if len(gold) != len(cos):
        raise ValueError(f"{len(cos)} embedding pairs but {len(gold)} gold scores")
    if len(gold) < 2 or np.ptp(cos) <= 1e-9 or np.ptp(gold) == 0:
        return float("nan")
    return float(spearmanr(cos, gold).statistic) * 100.0


def _encode_kwargs(encoder, batch_size: int | None) -> dict:
    """Keyword arguments the encoder's ``encode`` accepts: no inner progress bar, numpy out, our batch
    size."""
    try:
        params = inspect.signature(encoder.encode).parameters
    except (TypeError, ValueError):
        return {}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    wanted = {"show_progress_bar": False, "convert_to_numpy": True}
    if batch_size is not None:
        wanted["batch_size"] = batch_size
    return {k: v for k, v in wanted.items() if accepts_any or k in params}


def _encode_new(
    encoder,
    sentences: list[str],
    cache: dict[str, np.ndarray],
    desc: str,
    batch_size: int | None,
    show_progress_bar: bool,
) -> None:
    """Encode the sentences not yet in ``cache`` (longest first, in chunks) and store one vector per
    sentence."""
    from tqdm.auto import tqdm

    new = sorted({s for s in sentences if s not in cache}, key=len, reverse=True)
    kwargs = _encode_kwargs(encoder, batch_size)
    with tqdm(total=len(new), desc=desc, unit="sent", disable=not show_progress_bar, leave=True) as bar:
        for start in range(0, len(new), _CHUNK):
            chunk = new[start : start + _CHUNK]
            emb = encoder.encode(chunk, **kwargs)
            if hasattr(emb, "detach"):  # a torch tensor
                emb = emb.detach().float().cpu().numpy()
            emb = np.asarray(emb)
            if emb.ndim != 2 or emb.shape[0] != len(chunk):
                raise ValueError(
                    f"encoder.encode returned shape {emb.shape} for {len(chunk)} sentences; expected (n, dim)"
                )
            cache.update(zip(chunk, emb))
            bar.update(len(chunk))


def evaluate_sts(
    encoder,
    tasks: Sequence[str] = TASKS,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    *,
    source: str = "senteval",
    batch_size: int | None = None,
    max_pairs: int | None = None,
    seed: int = 0,
    show_progress_bar: bool = True,
) -> dict:
    """Spearman x 100 of cosine similarity on each task, plus their average (see the module doc for the
    protocol).

    ``split`` applies to STS-B and SICK-R (``train``/``dev``/``test``); STS12-16 only have ``test``.
    ``max_pairs`` evaluates a seeded random sample of that many pairs per task (quick runs; not the paper
    protocol).

    Returns ``{"scores": {task: spearman_x100}, "average": float, "pairs": {task: n}, "protocol": {...}}``;
    undefined scores are ``nan``. Raises ValueError for an unknown task (listing the valid ones), an empty
    task list or a bad encoder output, FileNotFoundError for missing data (naming the file and where it
    looked).
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError(f"no tasks given; choose from {', '.join(TASKS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(
            f"unknown STS task(s) {', '.join(map(repr, unknown))}; valid tasks: {', '.join(TASKS)}"
        )
    data = {
        t: load_sts(t, "test" if t.startswith("STS1") else split, source=source, data_dir=data_dir).sample(
            max_pairs, seed
        )
        for t in tasks
    }
    cache: dict[str, np.ndarray] = {}
    scores: dict[str, float] = {}
    for t in tasks:
        s1 = [normalize_whitespace(s) for s in data[t].sentences1]
        s2 = [normalize_whitespace(s) for s in data[t].sentences2]
        _encode_new(encoder, s1 + s2, cache, t, batch_size, show_progress_bar)
        scores[t] = spearman_cosine(
            np.stack([cache[s] for s in s1]), np.stack([cache[s] for s in s2]), data[t].scores
        )
    average = float(np.mean(list(scores.values())))  # nan if any task is undefined
    return {
        "scores": scores,
        "average": average,
        "pairs": {t: len(data[t]) for t in tasks},
        "protocol": {
            "metric": "spearman(cosine, gold) x 100",
            "source": source,
            "split": split,
            "sts12_16": "all subsets pooled (SentEval ['all']['spearman']['all'])",
            "whitespace": "split on whitespace, re-joined with single spaces (SentEval)",
            "max_pairs": max_pairs,
            "unique_sentences_encoded": len(cache),
        },
    }


def format_markdown(results: dict, name: str = "model") -> str:
    """A one-row markdown table: tasks as columns plus ``Avg.``; undefined scores read "undefined"."""
    tasks = list(results["scores"])
    short = {"STSBenchmark": "STS-B", "SICKRelatedness": "SICK-R"}
    head = "| " + " | ".join(["", *(short.get(t, t) for t in tasks), "Avg."]) + " |"
    rule = "|" + "|".join(["---"] * (len(tasks) + 2)) + "|"
    row = (
        "| "
        + " | ".join(
            [name, *(format_score(results["scores"][t]) for t in tasks), format_score(results["average"])]
        )
        + " |"
    )
    return "\n".join([head, rule, row])


def to_jsonable(obj):
    """Replace float nan/inf by ``None`` (JSON ``null``) recursively."""
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
