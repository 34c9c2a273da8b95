"""bellm.Encoder: packed encode against a naive padded loop, order, batching invariance, prompts, errors
(CPU)."""

from __future__ import annotations

import copy
import json
import random
import warnings

import numpy as np
import pytest
import torch
from _encode_helpers import SENTENCES, char_tokenizer, naive_encode
from tiny_models import tiny_model

from bellm.encoder import BELLM_PROMPT, Encoder

ATOL = 2e-5


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def _model(family="llama", **kw):
    return tiny_model(family, attn_implementation="sdpa", **kw)


def _encoder(model=None, tok=None, **kw):
    return Encoder(copy.deepcopy(model if model is not None else _model()), tok or char_tokenizer(), **kw)


# ---------------------------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_packed_equals_naive_padded_causal(tok, family, pooling):
    model = _model(family)
    enc = _encoder(model, tok, pooling=pooling, prompt=BELLM_PROMPT)
    got = enc.encode(SENTENCES, convert_to_tensor=True)
    want = naive_encode(model, tok, SENTENCES, pooling=pooling, prompt=BELLM_PROMPT)
    assert got.shape == (len(SENTENCES), 64)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_packed_equals_naive_padded_bidirectional(tok, pooling):
    model = _model()
    enc = _encoder(model, tok, from_layer=0, pooling=pooling, prompt=BELLM_PROMPT)
    got = enc.encode(SENTENCES, convert_to_tensor=True)
    want = naive_encode(model, tok, SENTENCES, pooling=pooling, prompt=BELLM_PROMPT, bidirectional=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    causal = naive_encode(model, tok, SENTENCES, pooling=pooling, prompt=BELLM_PROMPT)
    assert (got - causal).abs().max() > 1e-2  # the bidirectional layers did change the embedding


def test_patched_middle_layer_packed_equals_padded(tok):
    """from_layer inside the stack: packed batches equal the same patched model on padded batches."""
    enc = _encoder(_model(), tok, from_layer=1, pooling="mean")
    got = enc.encode(SENTENCES, convert_to_tensor=True)
    want = naive_encode(enc.model, tok, SENTENCES, pooling="mean", prompt="{text}", batch_size=4)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    causal = _encoder(_model(), tok, pooling="mean").encode(SENTENCES, convert_to_tensor=True)
    assert (got - causal).abs().max() > 1e-2


def test_last_layer_bidirectional_equals_causal_for_last_pooling(tok):
    """from_layer = -1 cannot change a last-token embedding (docs/bidirectional.md, section 1)."""
    model = _model()
    a = _encoder(model, tok, from_layer=-1).encode(SENTENCES)
    b = _encoder(model, tok).encode(SENTENCES)
    np.testing.assert_allclose(a, b, atol=ATOL)


def test_causal_lm_and_unmerged_peft_encode_like_the_base_model(tok):
    """A *ForCausalLM (and a peft model around one) is encoded through its backbone: same embeddings."""
    import peft

    base = tiny_model("llama", seed=3, vocab=len(tok))
    lm = tiny_model("llama", seed=3, vocab=len(tok), causal_lm=True)
    lm.model.load_state_dict(base.state_dict())
    want = Encoder(base, tok, from_layer=1).encode(SENTENCES)
    np.testing.assert_allclose(Encoder(lm, tok, from_layer=1).encode(SENTENCES), want, atol=1e-6)

    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = peft.get_peft_model(copy.deepcopy(lm), config)
    merged = copy.deepcopy(wrapped).merge_and_unload()
    got = Encoder(wrapped, tok, from_layer=1).encode(SENTENCES)
    np.testing.assert_allclose(got, Encoder(merged, tok, from_layer=1).encode(SENTENCES), atol=1e-5)
    assert not np.allclose(got, want, atol=1e-3)  # the adapter is really applied


def test_exclude_prompt_mean_pools_text_tokens_only(tok):
    model = _model()
    enc = _encoder(model, tok, pooling="mean", prompt=BELLM_PROMPT, exclude_prompt=True)
    sentences = [s for s in SENTENCES if s]  # an empty text has no token to pool (zeros)
    got = enc.encode(sentences, convert_to_tensor=True)
    want = naive_encode(model, tok, sentences, pooling="mean", prompt=BELLM_PROMPT, text_only=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    with_prompt = _encoder(model, tok, pooling="mean", prompt=BELLM_PROMPT).encode(
        sentences, convert_to_tensor=True
    )
    assert (got - with_prompt).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- batching /
# order
def test_order_restored_and_str_vs_list(tok):
    enc = _encoder(tok=tok)
    full = enc.encode(SENTENCES)
    perm = list(range(len(SENTENCES)))
    random.Random(0).shuffle(perm)
    shuffled = enc.encode([SENTENCES[i] for i in perm])
    np.testing.assert_allclose(shuffled, full[perm], atol=ATOL)
    one = enc.encode(SENTENCES[2])
    assert one.shape == (64,)
    np.testing.assert_allclose(one, full[2], atol=ATOL)
    assert enc.encode([SENTENCES[2]]).shape == (1, 64)
    assert enc.encode(tuple(SENTENCES)).shape == (len(SENTENCES), 64)


@pytest.mark.parametrize("budget,batch_size", [(1, None), (40, None), (10**6, None), (10**6, 1), (200, 3)])
def test_batching_does_not_change_embeddings(tok, budget, batch_size):
    enc = _encoder(tok=tok, pooling="mean")
    ref = enc.encode(SENTENCES, max_tokens_per_batch=10**6)
    got = enc.encode(SENTENCES, max_tokens_per_batch=budget, batch_size=batch_size)
    np.testing.assert_allclose(got, ref, atol=ATOL)


# ---------------------------------------------------------------------------------------------- prompts
def test_prompt_defaults_and_overrides(tok):
    model = _model()
    assert _encoder(model, tok).prompt == BELLM_PROMPT
    assert _encoder(model, tok, pooling="mean").prompt == "{text}"
    assert _encoder(model, tok, prompt="").prompt == "{text}"
    enc = _encoder(model, tok)
    plain = _encoder(model, tok, prompt="{text}").encode(SENTENCES[:4])
    np.testing.assert_allclose(enc.encode(SENTENCES[:4], prompt=""), plain, atol=ATOL)
    np.testing.assert_allclose(enc.encode(SENTENCES[:4], prompt="{text}"), plain, atol=ATOL)
    assert np.abs(enc.encode(SENTENCES[:4]) - plain).max() > 1e-3
    # braces inside a sentence are text, not template fields
    custom = 'Q: {text} A:"'
    got = _encoder(model, tok, prompt=custom).encode(["a {b} c", "{text}"], convert_to_tensor=True)
    want = naive_encode(model, tok, ["a {b} c", "{text}"], prompt=custom)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    # the last token is the prompt's closing quote for every sentence -> with 0 layers it would be identical
    ids, _, _ = enc.tokenize(SENTENCES)
    assert {t[-1] for t in ids} == {tok.convert_tokens_to_ids('"')}
    assert all(t[0] == tok.bos_token_id for t in ids)  # the tokenizer's special tokens are kept


@pytest.mark.parametrize("bad", ["no placeholder", "{text} and {text}", 3])
def test_bad_prompt(tok, bad):
    with pytest.raises((ValueError, TypeError), match="text"):
        _encoder(tok=tok, prompt=bad)


def test_truncation_keeps_the_prompt_tail(tok):
    model = _model()
    n_prompt = len(tok(BELLM_PROMPT.replace("{text}", ""))["input_ids"])  # BOS + prompt characters
    enc = _encoder(model, tok, max_length=n_prompt + 12)
    long_text = "abcdefghijklmnopqrstuvwxyz" * 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = enc.encode([long_text, "short", long_text + "!"])
    msgs = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert len(msgs) == 1 and msgs[0].startswith("2 of 3 sentences"), msgs
    want = _encoder(model, tok).encode([long_text[:12], "short", long_text[:12]])
    np.testing.assert_allclose(got, want, atol=ATOL)
    ids, _, _ = enc.tokenize([long_text])
    assert len(ids[0]) == n_prompt + 12 and tok.convert_ids_to_tokens(ids[0][-1]) == '"'
    with pytest.raises(ValueError, match="max_length=10"):
        _encoder(model, tok, max_length=10).encode([long_text])


# ---------------------------------------------------------------------------------------------- outputs /
# errors
def test_output_types_and_empty(tok):
    enc = _encoder(tok=tok)
    empty = enc.encode([])
    assert isinstance(empty, np.ndarray) and empty.shape == (0, 64) and empty.dtype == np.float32
    assert enc.encode([], convert_to_tensor=True).shape == (0, 64)
    t = enc.encode(SENTENCES[:3], convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.shape == (3, 64) and t.dtype == torch.float32
    as_list = enc.encode(SENTENCES[:3], convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == 3 and as_list[0].shape == (64,)
    normed = enc.encode(SENTENCES[:3], normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        normed, t.numpy() / np.linalg.norm(t.numpy(), axis=1, keepdims=True), atol=1e-5
    )


def test_bad_inputs(tok):
    enc = _encoder(tok=tok)
    with pytest.raises(TypeError, match="None"):
        enc.encode(None)
    with pytest.raises(TypeError, match=r"sentences\[1\] is int"):
        enc.encode(["ok", 3])
    with pytest.raises(TypeError, match="batch_sz.*valid ones are: batch_size"):
        enc.encode(["ok"], batch_sz=4)
    with pytest.raises(ValueError, match="unknown pooling 'max'.*last, mean, first"):
        _encoder(tok=tok, pooling="max")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        enc.encode(["ok"], batch_size=0)


def test_from_pretrained_roundtrip_and_errors(tmp_path, tok):
    model = _model()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    enc = Encoder.from_pretrained(tmp_path / "m", from_layer=2, pooling="mean", device="cpu")
    assert enc.from_layer == 2 and enc.model.config.bellm["from_layer"] == 2
    want = _encoder(model, tok, from_layer=2, pooling="mean").encode(SENTENCES)
    np.testing.assert_allclose(enc.encode(SENTENCES), want, atol=ATOL)
    # a saved encoder keeps its settings; a saved patched model keeps config.bellm
    enc.save_pretrained(tmp_path / "e")
    again = Encoder.from_pretrained(tmp_path / "e", device="cpu")
    assert again.config_dict() == enc.config_dict()
    np.testing.assert_allclose(again.encode(SENTENCES), want, atol=ATOL)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Encoder.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown pooling"):
        Encoder.from_pretrained(tmp_path / "m", pooling="cls")


def test_adapter(tmp_path, tok):
    from peft import LoraConfig, get_peft_model

    base = _model()
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    lora = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(tmp_path / "adapter")
    enc = Encoder.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter", device="cpu")
    merged = lora.merge_and_unload()
    want = naive_encode(merged, tok, SENTENCES, prompt=BELLM_PROMPT)
    np.testing.assert_allclose(enc.encode(SENTENCES), want.numpy(), atol=ATOL)
    assert np.abs(enc.encode(SENTENCES) - _encoder(base, tok).encode(SENTENCES)).max() > 1e-3
    # an adapter for another base model (hidden 32)
    other = get_peft_model(_model(hidden=32), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="does not fit this model"):
        Encoder.from_pretrained(tmp_path / "base", adapter=tmp_path / "other", device="cpu")
    with pytest.raises(FileNotFoundError, match="adapter path"):
        Encoder.from_pretrained(tmp_path / "base", adapter=tmp_path / "nope", device="cpu")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4


# ---------------------------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_real_smollm2_smoke():
    from bellm.models import default_model

    try:
        default_model(download=False)
    except FileNotFoundError:
        pytest.skip("the SmolLM2 GGUF is not available")
    enc = Encoder.from_pretrained(None, device="cpu")
    s = ["A man is playing a flute.", "A man plays the flute.", "The stock market crashed today."]
    emb = enc.encode(s, normalize_embeddings=True)
    assert emb.shape == (3, 576) and np.isfinite(emb).all()
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
    np.testing.assert_allclose(enc.encode(s[1], normalize_embeddings=True), emb[1], atol=1e-4)


def test_encode_declares_str_and_list_overloads():
    """``encode(str)`` is one ``(dim,)`` embedding, ``encode(list)`` ``(n, dim)`` rows; the overloads say so."""
    import typing

    if not hasattr(typing, "get_overloads"):
        pytest.skip("typing.get_overloads needs Python >= 3.11")
    overloads = typing.get_overloads(Encoder.encode)
    first = [typing.get_type_hints(f)["sentences"] for f in overloads]
    assert first[0] is str and len(overloads) == 2
    assert "Sequence[str]" in str(first[1])
    doc = Encoder.encode.__doc__
    assert all(part in doc for part in ("Args:", "Returns:", "Raises:", "Example:", "(dim,)", "(n, dim)"))
