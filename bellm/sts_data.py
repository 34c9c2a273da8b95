"""Loaders for the STS evaluation files in the ``sts/`` folder of the data directory (offline).

The data directory is ``data_dir`` when given, else ``$BELLM_DATA_DIR``, else a ``shared/data`` folder beside
the working directory or the repository (:func:`bellm.models.default_data_dir`).

Two sources of the same seven tasks:

- ``source="senteval"`` (default): ``sts/senteval_sts.tsv.gz``, the text **as SentEval preprocesses it**
  (STS12-16 and STS-B Moses-tokenized and lowercased; SICK unchanged). This is what BeLLM / SimCSE / AnglE
  report on.
- ``source="raw"``: the original cased, untokenized releases: ``sts/sts12-16_raw.tsv.gz``,
  ``sts/stsb_{train,dev,test}.tsv.gz`` and ``sts/sick.tsv.gz``. Same pairs and gold scores.

Rows per task (either source): STS12 3108, STS13 1500, STS14 3750, STS15 3000, STS16 1186 (test only);
STSBenchmark train 5749 / dev 1500 / test 1379; SICKRelatedness train 4500 / dev (``trial``) 500 / test 4927.

The files use no quoting (sentences contain ``"``), so they are read with ``csv.QUOTE_NONE``, and every field
stays text (``NA`` is a sentence, not a missing value).
"""

from __future__ import annotations

import csv
import functools
import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["TASKS", "STSPairs", "load_sts", "sts_file", "resolve_data_dir"]

TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness")
SOURCES = ("senteval", "raw")
_SPLITS = {t: ("test",) for t in TASKS[:5]}
_SPLITS["STSBenchmark"] = ("train", "dev", "test")
_SPLITS["SICKRelatedness"] = ("train", "dev", "test")
_SICK_SPLIT = {"train": "train", "dev": "trial", "test": "test"}  # SICK calls its dev split "trial"


@dataclass
class STSPairs:
    """Sentence pairs with gold similarity scores: ``sentences1[i]``, ``sentences2[i]``, ``scores[i]``
    (float64).

    ``subsets[i]`` names the sub-dataset of pair ``i`` (STS12-16: e.g. ``MSRpar``; STS-B: ``filename/year`` or
    ``filename``; SICK: ``""`` / the entailment label). Scores are 0-5 (SICK relatedness 1-5).
    """

    task: str
    split: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray
    subsets: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)

    def sample_indices(self, n: int | None, seed: int = 0) -> np.ndarray:
        """The sorted indices of the pairs :meth:`sample` keeps (every index for ``None`` or ``n >= len``).

        Raises ``ValueError`` for ``n <= 0``."""
        if n is None or n >= len(self):
            return np.arange(len(self))
        if n <= 0:
            raise ValueError(f"sample size must be positive, got {n}")
        return np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))

    def sample(self, n: int | None, seed: int = 0) -> STSPairs:
        """A random subset of ``n`` pairs (seeded, order kept); ``None`` or ``n >= len`` returns ``self``."""
        if n is None or n >= len(self):
            return self
        idx = self.sample_indices(n, seed)
        return STSPairs(
            self.task,
            self.split,
            [self.sentences1[i] for i in idx],
            [self.sentences2[i] for i in idx],
            self.scores[idx],
            [self.subsets[i] for i in idx] if self.subsets else [],
        )


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` (the folder holding ``sts/``), or :func:`bellm.models.default_data_dir` when ``None``."""
    if data_dir is None:
        from bellm.models import default_data_dir

        return default_data_dir()
    path = Path(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"data directory {str(path)!r} does not exist; pass the folder that holds sts/"
        )
    return path


def sts_file(
    task: str, split: str, source: str = "senteval", data_dir: str | os.PathLike | None = None
) -> Path:
    """The path of the file holding ``task``/``split`` in ``source``; raises FileNotFoundError naming it."""
    task, split = _check(task, split, source)
    root = resolve_data_dir(data_dir)
    if source == "senteval":
        name = "senteval_sts.tsv.gz"
    elif task == "STSBenchmark":
        name = f"stsb_{split}.tsv.gz"
    elif task == "SICKRelatedness":
        name = "sick.tsv.gz"
    else:
        name = "sts12-16_raw.tsv.gz"
    for candidate in (root / "sts" / name, root / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{task} ({split}, source={source!r}) needs the file {name}; not found at {root / 'sts' / name} "
        f"nor {root / name}. Pass data_dir= (the folder holding sts/) or set BELLM_DATA_DIR."
    )


def load_sts(
    task: str, split: str = "test", *, source: str = "senteval", data_dir: str | os.PathLike | None = None
) -> STSPairs:
    """Load one task's pairs. ``split``: ``test`` for STS12-16; ``train``/``dev``/``test`` for STS-B and
    SICK-R.

    Raises ValueError for an unknown task/split/source (listing the valid ones) or when no rows match, and
    FileNotFoundError when the data directory or file is missing (naming the file and where it looked).
    """
    task, split = _check(task, split, source)
    path = sts_file(task, split, source, data_dir)
    rows = _read_tsv(str(path))
    if source == "senteval":
        file_split = _SICK_SPLIT[split] if task == "SICKRelatedness" else split
        rows = [r for r in rows if r["task"] == task and r["split"] == file_split]
        s1, s2, sc, sub = "sentence1", "sentence2", "score", "subset"
    elif task == "SICKRelatedness":
        rows = [r for r in rows if r["split"] == _SICK_SPLIT[split]]
        s1, s2, sc, sub = "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment"
    elif task == "STSBenchmark":
        s1, s2, sc, sub = "sentence1", "sentence2", "score", "filename"
    else:
        rows = [r for r in rows if r["task"] == task]
        s1, s2, sc, sub = "sentence1", "sentence2", "score", "subset"
    if not rows:
        raise ValueError(f"no {task} {split} rows in {path}; the file may be truncated or of another version")
    try:
        scores = np.array([float(r[sc]) for r in rows], dtype=np.float64)
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"{path}: bad or missing {sc!r} column ({err}); expected the shipped file layout"
        ) from err
    return STSPairs(task, split, [r[s1] for r in rows], [r[s2] for r in rows], scores, [r[sub] for r in rows])


def _check(task: str, split: str, source: str) -> tuple[str, str]:
    if task not in TASKS:
        raise ValueError(f"unknown STS task {task!r}; valid tasks: {', '.join(TASKS)}")
    if source not in SOURCES:
        raise ValueError(
            f"unknown source {source!r}; use 'senteval' (paper preprocessing) or 'raw' (original text)"
        )
    if split == "trial":
        split = "dev"
    if split not in _SPLITS[task]:
        raise ValueError(f"{task} has no split {split!r}; valid: {', '.join(_SPLITS[task])}")
    return task, split


@functools.lru_cache(maxsize=8)
def _read_tsv(path: str) -> list[dict[str, str]]:
    """All rows of a gzipped, header-first, unquoted TSV as dicts of strings (cached per path)."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
    if rows and None in rows[0]:
        raise ValueError(
            f"{path}: more fields than header columns on the first row; not the shipped file layout"
        )
    return rows
