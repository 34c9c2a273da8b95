"""Reading training data and turning texts into prompted token ids.

Two kinds of file, each ``.tsv``, ``.tsv.gz`` (UTF-8, tab-separated, one header line, no quoting) or
``.jsonl`` (one object per line, optionally ``.jsonl.gz``):

- triplets: columns ``anchor`` (or ``text``), ``positive``, ``negative`` — e.g. the SNLI
  triplets, AnglE's ``all_nli_angle_format_b`` (``text, positive, negative``);
- scored pairs: ``sentence1``/``text1``, ``sentence2``/``text2``, ``score`` (a number, e.g. STS-B 0-5).

Extra columns are ignored. Every error is a :class:`DataError` (a ValueError) naming the file, the line and
the expected columns.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bellm._io import open_text, text_errors
from bellm.common import BELLM_PROMPT
from bellm.errors import DataFileError

__all__ = ["DataError", "TrainData", "read_train_data", "prompt_token_ids", "BELLM_PROMPT"]


TRIPLET_COLUMNS = (("anchor", "text"), ("positive",), ("negative",))
PAIR_COLUMNS = (("sentence1", "text1"), ("sentence2", "text2"), ("score", "label"))


class DataError(DataFileError):
    """A training file that cannot be read: names the file, the line and what was expected."""


@dataclass
class TrainData:
    """``kind`` is ``"triplets"`` (``texts`` = [anchors, positives, negatives]) or ``"pairs"`` (``texts`` =
    [text1s, text2s], ``scores`` one float per pair). All lists have ``len(self)`` entries."""

    kind: str
    texts: list[list[str]]
    scores: list[float] | None = None
    path: str = ""

    def __len__(self) -> int:
        return len(self.texts[0])


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)``; for TSV the header is line 1 and rows start at line 2."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl") or name.endswith(".json"):
        with text_errors(path, DataError), open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}"
                    )
                yield lineno, row
    elif name.endswith(".tsv") or name.endswith(".txt"):
        with text_errors(path, DataError), open_text(path) as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                return
            for lineno, values in enumerate(reader, start=2):
                if not values:
                    continue
                yield lineno, dict(zip(header, values))
    else:
        raise DataError(f"{path}: unknown file type; use .tsv, .tsv.gz, .jsonl or .jsonl.gz")


def _pick(row: dict, names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    return None


def _expected(columns) -> str:
    return ", ".join("/".join(names) for names in columns)


def read_train_data(path: str | os.PathLike, kind: str = "auto", limit: int | None = None) -> TrainData:
    """Read triplets or scored pairs from ``path``; ``kind`` is ``"triplets"``, ``"pairs"`` or ``"auto"``
    (from the first row's columns). ``limit`` keeps the first rows only. Raises :class:`DataError` on a
    missing column, a non-numeric score, an empty text, or a file with no rows; FileNotFoundError when
    ``path`` does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data file {str(path)!r} not found")
    if kind not in ("auto", "triplets", "pairs"):
        raise ValueError(f"kind must be 'auto', 'triplets' or 'pairs', got {kind!r}")
    columns = None
    texts: list[list[str]] = []
    scores: list[float] = []
    for lineno, row in _rows(path):
        if columns is None:
            if kind == "auto":
                kind = (
                    "pairs"
                    if _pick(row, PAIR_COLUMNS[2]) is not None and "negative" not in row
                    else "triplets"
                )
            columns = TRIPLET_COLUMNS if kind == "triplets" else PAIR_COLUMNS
            texts = [[] for _ in range(3 if kind == "triplets" else 2)]
        values = [_pick(row, names) for names in columns]
        missing = [names[0] for names, v in zip(columns, values) if v is None]
        if missing:
            raise DataError(
                f"{path}:{lineno}: missing column(s) {', '.join(missing)}; {kind} need columns "
                f"{_expected(columns)} (found: {', '.join(map(str, row)) or 'none'})"
            )
        n_text = len(texts)
        for i in range(n_text):
            text = str(values[i])
            if not text.strip():
                raise DataError(
                    f"{path}:{lineno}: column {columns[i][0]} is empty; every text must be non-empty"
                )
            texts[i].append(text)
        if kind == "pairs":
            try:
                score = float(values[2])
            except (TypeError, ValueError):
                raise DataError(
                    f"{path}:{lineno}: score {values[2]!r} is not a number; the {columns[2][0]} column "
                    "must be numeric"
                ) from None
            if score != score or score in (float("inf"), float("-inf")):
                raise DataError(f"{path}:{lineno}: score {values[2]!r} is not finite")
            scores.append(score)
        if limit is not None and len(texts[0]) >= limit:
            break
    if not texts or not texts[0]:
        raise DataError(
            f"{path}: no data rows; expected a header and rows with columns {_expected(TRIPLET_COLUMNS)} "
            f"(triplets) or {_expected(PAIR_COLUMNS)} (scored pairs)"
        )
    return TrainData(kind=kind, texts=texts, scores=scores if kind == "pairs" else None, path=str(path))


def prompt_template_check(prompt: str) -> str:
    """``prompt`` itself when it is a str holding the placeholder ``{text}`` exactly once (every other brace is
    literal text); TypeError / ValueError otherwise."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str template containing {{text}}, got {type(prompt).__name__}")
    if prompt.count("{text}") != 1:
        raise ValueError(f"prompt must contain the placeholder {{text}} exactly once, got {prompt!r}")
    return prompt


def prompt_token_ids(
    tokenizer, texts: Sequence[str], prompt: str = BELLM_PROMPT, max_length: int | None = 60
) -> list[list[int]]:
    """Token ids of the prompted text (``prompt`` with its one ``{text}`` replaced by ``t``; every other brace
    is literal, as in the Encoder) for each text, at most ``max_length`` tokens including the prompt.

    A sequence that fits is the tokenization of the whole prompted string (as the encoder tokenizes it). A
    longer one keeps the prompt whole and cuts the *text* (its last tokens, found from the fast tokenizer's
    offsets), so the prompt's closing ``"`` — the pooled last token — is always last. (The paper's
    ``max_length=60`` truncated the whole prompted sequence from the right, which drops the prompt's end for
    long sentences; here 60 is the same total budget, spent on the text.) Raises ValueError when the prompt
    alone does not fit in ``max_length``.
    """
    prefix, suffix = prompt_template_check(prompt).split("{text}")
    prompted = [prefix + t + suffix for t in texts]
    enc = tokenizer(prompted, add_special_tokens=True, return_offsets_mapping=max_length is not None)
    out = []
    for t, ids, offsets in zip(texts, enc["input_ids"], enc.get("offset_mapping", [None] * len(texts))):
        ids = list(ids)
        if max_length is None or len(ids) <= max_length:
            out.append(ids)
            continue
        text_start, suffix_start = len(prefix), len(prefix) + len(t)
        # trailing tokens that belong to the suffix (or are special tokens, offsets (0, 0), e.g. an added EOS)
        n_tail = 0
        for start, end in reversed(offsets):
            if start >= suffix_start or (start == end == 0):
                n_tail += 1
            else:
                break
        n_head = sum(1 for start, end in offsets if end <= text_start and not start == end == 0)
        n_head += sum(1 for start, end in offsets[:1] if start == end == 0)  # a leading BOS
        if n_head + n_tail >= max_length:
            raise ValueError(
                f"max_length={max_length} leaves no room for text: the prompt alone takes {n_head + n_tail} "
                "tokens; raise max_length"
            )
        out.append(ids[: max_length - n_tail] + ids[len(ids) - n_tail :])
    return out
