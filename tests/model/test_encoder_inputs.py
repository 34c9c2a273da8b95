"""Encoder arguments and inputs that used to be ignored, accepted or crash: counts, prompts with other braces, lone
surrogates, the default max_length (CPU, tiny model)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from _encode_helpers import SENTENCES, char_tokenizer
from tiny_models import tiny_model

from bellm.encoder import Encoder

ATOL = 2e-5


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", num_layers=2, attn_implementation="sdpa", max_position_embeddings=4096)


def _encoder(model, tok, **kw):
    return Encoder(copy.deepcopy(model), tok, **kw)


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"max_tokens_per_batch": 0}, ValueError, "max_tokens_per_batch must be >= 1, got 0"),
        ({"max_tokens_per_batch": 64.0}, TypeError, r"max_tokens_per_batch must be an int .* got 64\.0"),
        ({"max_length": 32.5}, TypeError, r"max_length must be an int .* got 32\.5"),
        ({"max_length": True}, TypeError, "max_length must be an int"),
        ({"max_length": 0}, ValueError, "max_length must be >= 1"),
    ],
)
def test_bad_counts_refused_at_construction(model, tok, kw, error, match):
    """On the previous main max_tokens_per_batch=0 was silently ignored and floats were accepted."""
    with pytest.raises(error, match=match):
        _encoder(model, tok, **kw)


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"max_tokens_per_batch": 0}, ValueError, "max_tokens_per_batch must be >= 1, got 0"),
        ({"batch_size": 2.0}, TypeError, r"batch_size must be an int .* got 2\.0"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ],
)
def test_bad_counts_refused_at_encode(model, tok, kw, error, match):
    enc = _encoder(model, tok)
    with pytest.raises(error, match=match):
        enc.encode(SENTENCES[:2], **kw)
    np.testing.assert_allclose(  # numpy integers are fine
        enc.encode(SENTENCES, batch_size=np.int64(2), max_tokens_per_batch=np.int32(64)),
        enc.encode(SENTENCES),
        atol=ATOL,
    )


@pytest.mark.parametrize("prompt", ['A {b} "{text}" and {{x}}: {}', "{text}{{", "}} {text} {0}"])
def test_prompt_with_other_braces_is_literal_everywhere(model, tok, prompt):
    """Only ``{text}`` is a placeholder: every other brace is literal text, in the Encoder and in training.

    On the previous main training built prompts with ``str.format``: other braces raised KeyError/IndexError,
    and ``{{x}}`` trained as ``{x}`` while the Encoder encoded ``{{x}}``."""
    from bellm.train_data import prompt_token_ids

    enc = _encoder(model, tok, prompt=prompt)
    head, tail = prompt.split("{text}")
    ids, _, _ = enc.tokenize(SENTENCES[:3])
    assert ids == [tok(head + s + tail)["input_ids"] for s in SENTENCES[:3]]
    assert prompt_token_ids(tok, SENTENCES[:3], prompt=prompt, max_length=None) == ids
    literal = _encoder(model, tok, prompt="{text}").encode([head + s + tail for s in SENTENCES[:3]])
    np.testing.assert_allclose(enc.encode(SENTENCES[:3]), literal, atol=ATOL)


def test_lone_surrogate_names_the_sentence_and_position(model, tok):
    """On the previous main the tokenizer raised a bare TypeError without saying which sentence."""
    enc = _encoder(model, tok)
    bad = "caf\udce9 au lait"  # what errors="surrogateescape" gives for a Latin-1 byte
    with pytest.raises(ValueError, match=r"sentences\[1\] holds a lone surrogate '\\udce9' at character 3"):
        enc.encode(["fine", bad])


def test_default_max_length_is_bounded_and_truncation_says_how_to_raise_it(model, tok):
    """On the previous main the default was the model's max_position_embeddings (8192 for SmolLM2): a
    10,000-word input ran for minutes and took GBs without a word."""
    enc = _encoder(model, tok)
    assert enc.max_length == 512  # the model allows 4096
    assert _encoder(tiny_model("llama", num_layers=2, max_position_embeddings=128), tok).max_length == 128
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc.encode(["word " * 200, "short"])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert (
        messages[0].startswith("1 of 2 sentences were longer than max_length=512")
        and "larger max_length" in (messages[0])
    )
    assert _encoder(model, tok, max_length=2048).max_length == 2048  # the way to raise it
