"""bellm.patch on the real SmolLM2-135M-Instruct (Llama, GQA 9/3 heads, 30 layers), float32 on CPU.

Skipped when the GGUF file is not on this machine (nothing is downloaded).
"""

from __future__ import annotations

import pytest
import torch

import bellm
from bellm.packing import pack

SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run across the snowy field while a child watches.",
    "Hi",
    "The quick brown fox jumps over the lazy dog near the river bank.",
]


@pytest.fixture(scope="module")
def smollm2():
    from bellm.models import default_model, load_model_and_tokenizer

    try:
        directory, gguf = default_model(download=False)
    except FileNotFoundError as err:
        pytest.skip(f"SmolLM2 GGUF not available: {err}")
    model, tokenizer = load_model_and_tokenizer(directory / gguf, dtype=torch.float32, device="cpu")
    return model, tokenizer


def _states(model, token_lists, side):
    """Last hidden states of each sentence, run alone / in a padded batch / packed (list of (len, dim))."""
    with torch.no_grad():
        if side == "alone":
            return [model(input_ids=torch.tensor([t])).last_hidden_state[0] for t in token_lists]
        if side == "packed":
            batch = pack(token_lists)
            out = model(**batch.model_kwargs()).last_hidden_state[0]
            cu = batch.cu_seqlens.tolist()
            return [out[a:b] for a, b in zip(cu[:-1], cu[1:])]
        width = max(len(t) for t in token_lists)
        ids = torch.zeros(len(token_lists), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(token_lists):
            sl = slice(0, len(t)) if side == "right" else slice(width - len(t), width)
            ids[i, sl], mask[i, sl] = torch.tensor(t), 1
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        return [out[i][mask[i].bool()] for i in range(len(token_lists))]


def test_real_model_patched_and_unpatched_invariance(smollm2):
    model, tokenizer = smollm2
    n = model.config.num_hidden_layers
    tokens = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in SENTENCES]
    causal = _states(model, tokens, "alone")
    for side in ("right", "left"):
        for got, want in zip(_states(model, tokens, side), causal):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    try:
        for from_layer in (n, n - 10, -1):
            bellm.patch(model, from_layer=from_layer)
            alone = _states(model, tokens, "alone")
            for side in ("right", "left", "packed"):
                for got, want in zip(_states(model, tokens, side), alone):
                    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            if from_layer == n:  # nothing bidirectional: the causal model
                for got, want in zip(alone, causal):
                    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            elif from_layer == -1:  # docs/bidirectional.md, section 1: the last token is unchanged, the first is not
                for got, want in zip(alone, causal):
                    torch.testing.assert_close(got[-1], want[-1], atol=1e-4, rtol=1e-4)
                first = [(g[0] - w[0]).abs().max().item() for g, w in zip(alone, causal) if len(g) > 1]
                assert max(first) > 1e-3
            else:
                assert max((g - w).abs().max().item() for g, w in zip(alone, causal)) > 1e-2
    finally:
        bellm.unpatch(model)
    assert model.config._attn_implementation != "bellm" and not hasattr(model.config, "bellm")
