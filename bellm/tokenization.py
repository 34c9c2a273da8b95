"""Tokenizing prompted sentences for :class:`bellm.Encoder`: one tokenizer call, no padding, and truncation that
cuts only the *text* so the prompt's tail (the pooled last token under BeLLM's prompt) always survives.

:func:`tokenize_prompted` returns, per sentence, the token ids and a *text mask* (which tokens come from the
sentence itself rather than from the prompt or special tokens; ``exclude_prompt`` pools over them).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["tokenize_prompted"]


def _prompt_too_long(max_length: int, n_prompt: int) -> str:
    return (
        f"max_length={max_length} leaves no room for the text: the prompt and special tokens "
        f"alone take {n_prompt} tokens; raise max_length or shorten the prompt"
    )


def _text_mask(offsets: Sequence[tuple[int, int]], start: int, stop: int) -> list[bool]:
    """True for the tokens whose character span overlaps the text ``[start, stop)`` of the prompted string
    (special tokens have empty spans and are never text)."""
    return [e > s and s < stop and e > start for s, e in offsets]


def _drop_text_end(
    ids: list[int], mask: list[bool], n_drop: int, max_length: int
) -> tuple[list[int], list[bool]]:
    """Remove the last ``n_drop`` text tokens (by the mask); ValueError when the text has fewer."""
    text_pos = [p for p, m in enumerate(mask) if m]
    if n_drop > len(text_pos):
        raise ValueError(_prompt_too_long(max_length, len(ids) - len(text_pos)))
    drop = set(text_pos[len(text_pos) - n_drop :])
    return [t for p, t in enumerate(ids) if p not in drop], [m for p, m in enumerate(mask) if p not in drop]


def _tail_length(tokenizer, tail: str) -> int:
    """Tokens at the end of a prompted sequence that belong to the prompt's tail: the tail tokenized alone
    plus the special tokens the tokenizer appends (a slow tokenizer gives no offsets to find them)."""
    specials = len(tokenizer("", add_special_tokens=True)["input_ids"])
    return len(tokenizer(tail, add_special_tokens=False)["input_ids"]) + max(0, specials - 1)


def tokenize_prompted(
    tokenizer, sentences: Sequence[str], template: str, max_length: int
) -> tuple[list[list[int]], list[list[bool] | None], int]:
    """Token ids of ``template`` with ``{text}`` replaced by each sentence (special tokens as the tokenizer adds
    them, no padding).

    Returns ``(token_ids, text_masks, num_truncated)``: ``text_masks[i]`` marks the tokens of sentence ``i``
    that come from the text itself, or is None when the tokenizer gives no offsets (a slow tokenizer). A
    sequence over ``max_length`` loses tokens from the end of its text; without offsets it keeps as many
    trailing tokens as the prompt's tail takes. Raises ValueError when the prompt and special tokens alone
    exceed ``max_length``.
    """
    head, tail = template.split("{text}")
    texts = [head + s + tail for s in sentences]
    if not texts:
        return [], [], 0
    kwargs = dict(add_special_tokens=True, padding=False, truncation=False, verbose=False)
    try:
        enc = tokenizer(texts, return_offsets_mapping=True, **kwargs)
        offsets = enc["offset_mapping"]
    except NotImplementedError:  # a slow (Python) tokenizer has no offsets
        enc = tokenizer(texts, **kwargs)
        offsets = None
    ids_all = [list(ids) for ids in enc["input_ids"]]
    masks: list[list[bool] | None] = []
    num_truncated = 0
    n_tail = None
    for i, ids in enumerate(ids_all):
        mask = None if offsets is None else _text_mask(offsets[i], len(head), len(head) + len(sentences[i]))
        if len(ids) > max_length:
            num_truncated += 1
            if mask is not None:
                ids, mask = _drop_text_end(ids, mask, len(ids) - max_length, max_length)
            else:
                n_tail = _tail_length(tokenizer, tail) if n_tail is None else n_tail
                if n_tail >= max_length:
                    raise ValueError(_prompt_too_long(max_length, n_tail))
                ids = ids[: max_length - n_tail] + ids[len(ids) - n_tail :]
            ids_all[i] = ids
        masks.append(mask)
    return ids_all, masks, num_truncated
