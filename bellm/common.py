"""Names shared across bellm, defined once: the BeLLM prompt, pooling modes, file names, prompt resolution,
score formatting.

This module imports nothing heavy (no torch, no transformers), so the command line and light modules can use
it freely.
"""

from __future__ import annotations

import math

__all__ = [
    "BELLM_PROMPT",
    "NO_PROMPT",
    "POOLING_MODES",
    "ENCODER_CONFIG",
    "LAYER_NORMS",
    "check_pooling",
    "resolve_prompt",
    "normalize_whitespace",
    "format_score",
]

BELLM_PROMPT = 'The representative word for sentence {text} is:"'
"""BeLLM's prompt: with last-token pooling the pooled token is always the closing ``"``."""

NO_PROMPT = "{text}"
"""The template that leaves the text as it is."""

POOLING_MODES = ("last", "mean", "first")
"""How a text's embedding is pooled from its tokens' hidden states; ``"last"`` is BeLLM's. The kernels in
``bellm_kernels`` accept the same three modes."""

LAYER_NORMS = ("final", "none")
"""How the turning-point curve reads a layer's hidden states: through the model's final norm, or raw."""

ENCODER_CONFIG = "bellm_encoder.json"
"""The encoder settings file (from_layer, pooling, prompt, max_length) that ``Encoder.save_pretrained`` and
``bellm train`` write and ``Encoder.from_pretrained`` reads."""


def check_pooling(pooling: str) -> str:
    """``pooling`` itself if it is one of :data:`POOLING_MODES`; ValueError listing them otherwise."""
    if pooling not in POOLING_MODES:
        raise ValueError(f"unknown pooling {pooling!r}; pooling must be one of {', '.join(POOLING_MODES)}")
    return pooling


def resolve_prompt(prompt: str | None, pooling: str) -> str:
    """The prompt template to use.

    ``None``: :data:`BELLM_PROMPT` for last-token pooling, no prompt (:data:`NO_PROMPT`) otherwise; ``""``: no
    prompt; else ``prompt`` itself, which must contain the placeholder ``{text}`` exactly once.

    Raises TypeError for a non-str ``prompt`` and ValueError for a template without exactly one ``{text}``.
    """
    if prompt is None:
        return BELLM_PROMPT if pooling == "last" else NO_PROMPT
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str template containing {{text}}, got {type(prompt).__name__}")
    if prompt == "":
        return NO_PROMPT
    if prompt.count("{text}") != 1:
        raise ValueError(
            f"prompt {prompt!r} must contain the placeholder {{text}} exactly once, e.g. {BELLM_PROMPT!r}; "
            'pass prompt="" for no prompt'
        )
    return prompt


def normalize_whitespace(sentence: str) -> str:
    """SentEval's whitespace rule: split on any whitespace, re-join with single spaces."""
    return " ".join(sentence.split())


def format_score(x: float | None) -> str:
    """A score with two decimals; ``None``, nan and inf (an undefined Spearman) read ``"undefined"``."""
    return "undefined" if x is None or not math.isfinite(x) else f"{x:.2f}"
