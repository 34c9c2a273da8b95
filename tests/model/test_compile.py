"""A bellm-patched model under torch.compile: bellm's attention and pooling are torch.library custom ops, so
the whole forward traces as one graph (no graph break) and compiled outputs and gradients equal eager."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

import bellm
import bellm_kernels
from bellm.packing import pack


@pytest.fixture(scope="module")
def patched():
    return bellm.patch(tiny_model("llama"), from_layer=1)


def _inputs(kind: str) -> dict:
    if kind == "packed":
        return pack([[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]).model_kwargs()
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    if kind == "dense":
        return {"input_ids": ids}
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    mask[1, 6:] = 0  # right padding
    return {"input_ids": ids, "attention_mask": mask}


def _embed(model, kwargs):
    """Last hidden state pooled by bellm_kernels.pool (last token), normalised: ``(num_seqs, hidden)``."""
    hidden = model(**kwargs).last_hidden_state
    if "cu_seq_lens_q" in kwargs:
        return bellm_kernels.pool(hidden[0], mode="last", cu_seqlens=kwargs["cu_seq_lens_q"], normalize=True)
    mask = kwargs.get("attention_mask", torch.ones(hidden.shape[:2], dtype=torch.long))
    return bellm_kernels.pool(hidden, mode="mean", attention_mask=mask, normalize=True)


def _loss_and_grads(fn, model, kwargs):
    model.zero_grad()
    out = fn(model, kwargs)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


@pytest.mark.parametrize("kind", ["dense", "padded", "packed"])
def test_no_graph_break_and_equal_to_eager(patched, kind):
    kwargs = _inputs(kind)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(_embed)(patched, kwargs)
    assert explained.graph_break_count == 0, [str(r.reason)[:300] for r in explained.break_reasons]
    assert explained.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(_embed, fullgraph=True, backend="aot_eager")  # fake tensors + AOTAutograd
    got, got_grads = _loss_and_grads(compiled, patched, kwargs)
    want, want_grads = _loss_and_grads(_embed, patched, kwargs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got_grads.keys() == want_grads.keys() and got_grads
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_inductor_matches_eager(patched):
    kwargs = _inputs("packed")
    torch._dynamo.reset()
    compiled = torch.compile(_embed, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(patched, kwargs), _embed(patched, kwargs), rtol=1e-5, atol=1e-5)
