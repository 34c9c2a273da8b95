"""GPU-only kernel cases that the other ``gpu``-marked tests leave out: MHA (one query head per KV head) in bf16,
fp16 and fp32 for the packed and padded layouts, no recompilation for new padded shapes (attention and pooling)
or new packed lengths (pooling), and offsets past 2**31 elements.

Collected everywhere, run only with CUDA (``gpu`` marker). Outputs and gradients are compared with
``bellm_kernels.reference`` in float32 on fresh random inputs; kernel allocations are NaN-poisoned, so an element
a kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import bellm_kernels
from bellm_kernels import reference

attention_module = importlib.import_module("bellm_kernels.attention")
pool_module = importlib.import_module("bellm_kernels.pool")

pytestmark = pytest.mark.gpu
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}  # relative to max(1, max |reference|)


@pytest.fixture(autouse=True)
def _nan_poison(monkeypatch):
    """torch.empty / torch.empty_like return NaN-filled floating tensors during every test in this module."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))


def _randn(*shape, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).to(dtype)


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")


def _run(fn, q, k, v, do, **kw):
    """Output and (dq, dk, dv) of ``fn`` for the upstream grad ``do``."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kw)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def _check(got, ref, dtype, what):
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert a.dtype == dtype and a.shape == b.shape, f"{what} {name}: {a.dtype} {tuple(a.shape)}"
        assert not torch.isnan(a).any(), f"{what} {name}: NaN in the kernel result"
        err = (a.float() - b.float()).abs().max().item()
        bound = TOL[dtype] * max(1.0, b.float().abs().max().item())
        assert err <= bound, f"{what} {name}: max abs error {err:.3g} > {bound:.3g}"


def _compare(q, k, v, do, what, **kw):
    got = _run(bellm_kernels.attention, q, k, v, do, **kw)
    ref = _run(reference.attention, q.float(), k.float(), v.float(), do.float(), **kw)
    _check(got, ref, q.dtype, what)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_gpu_mha_packed_and_padded(causal, dtype):
    lengths = [1, 9, 0, 64, 200, 33]
    q, k, v, do = (_randn(sum(lengths), 4, 128, dtype=dtype, seed=s) for s in range(4))
    _compare(q, k, v, do, "packed", causal=causal, cu_seqlens=_cu(lengths), max_seqlen=200)
    q, k, v, do = (_randn(3, 150, 4, 128, dtype=dtype, seed=10 + s) for s in range(4))
    mask = torch.ones(3, 150, dtype=torch.bool, device="cuda")
    mask[0, :50] = False  # left padding
    mask[1, 70:] = False  # right padding
    _compare(q, k, v, do, "padded", causal=causal, attention_mask=mask)


def _attention_compiled(block_d: int) -> list[int]:
    """Autotuner cache sizes and Triton compile-cache sizes of the three attention kernels."""
    counts = []
    for kind, kernel in attention_module._KERNELS.items():
        tuner = attention_module._tuned_kernel(kind, block_d, 2, torch.cuda.get_device_capability())
        counts.append(len(tuner.cache))
        try:  # Triton's private compile cache: (kernel_cache, ...) per device
            counts.append(sum(len(c[0]) for c in kernel.device_caches.values()))
        except (AttributeError, TypeError, IndexError, KeyError):
            pass
    return counts


def test_gpu_new_padded_shapes_do_not_retune_or_recompile():
    """After one warm call, new batch sizes and padded lengths (masked, bidirectional, head_dim 128) reuse the
    tuned configs and compiled kernels."""

    def call(batch, seqlen, seed):
        q, k, v, do = (_randn(batch, seqlen, 8, 128, dtype=torch.bfloat16, seed=seed + s) for s in range(4))
        mask = torch.ones(batch, seqlen, dtype=torch.bool, device="cuda")
        mask[0, seqlen // 2 :] = False
        _run(bellm_kernels.attention, q, k, v, do, causal=False, attention_mask=mask)

    call(2, 40, 0)
    before = _attention_compiled(128)
    call(5, 301, 10)
    call(1, 17, 20)
    assert _attention_compiled(128) == before


def _pool_compiled() -> list[int]:
    counts = [len(pool_module._pool_fwd_tuned.cache), len(pool_module._pool_bwd_tuned.cache)]
    for kernel in (pool_module._pool_fwd_kernel, pool_module._pool_bwd_kernel):
        try:
            counts.append(sum(len(c[0]) for c in kernel.device_caches.values()))
        except (AttributeError, TypeError, IndexError, KeyError):
            pass
    return counts


def test_gpu_pool_new_lengths_and_shapes_do_not_retune_or_recompile():
    def call(lengths, seed):
        hidden = _randn(sum(lengths), 576, dtype=torch.bfloat16, seed=seed).requires_grad_()
        out = bellm_kernels.pool(hidden, mode="mean", cu_seqlens=_cu(lengths), normalize=True)
        out.backward(torch.ones_like(out))
        padded = _randn(len(lengths), max(lengths), 576, dtype=torch.bfloat16, seed=seed + 1).requires_grad_()
        mask = torch.arange(max(lengths), device="cuda")[None, :] < torch.tensor(lengths, device="cuda")[:, None]
        out = bellm_kernels.pool(padded, mode="last", attention_mask=mask)
        out.backward(torch.ones_like(out))

    call([3, 50, 17], 0)
    before = _pool_compiled()
    call([1, 2, 300, 77, 5], 10)
    call([999], 20)
    assert _pool_compiled() == before


def test_gpu_offsets_past_int32():
    """Packed q, k, v of more than 2**31 elements each (about 34 GB with the output and gradients): the last
    sequence, whose offsets exceed int32, matches the reference, forward and backward."""
    heads, head_dim, seqlen = 8, 128, 512
    total = 2**31 // (heads * head_dim) + 4 * seqlen  # tokens: the last rows lie past element 2**31
    cu = _cu([seqlen] * (total // seqlen))
    q, k, v = (_randn(total, heads, head_dim, dtype=torch.bfloat16, seed=s).requires_grad_() for s in range(3))
    out = bellm_kernels.attention(q, k, v, causal=False, cu_seqlens=cu, max_seqlen=seqlen)
    do = torch.zeros_like(out)  # only the checked sequence gets an upstream grad; sequences are independent
    do[-seqlen:] = _randn(seqlen, heads, head_dim, dtype=torch.bfloat16, seed=3)
    out.backward(do)
    got = [t[-seqlen:].clone() for t in (out.detach(), q.grad, k.grad, v.grad)]
    last = [x[-seqlen:].detach().float() for x in (q, k, v, do)]
    del q, k, v, out, do
    ref = _run(reference.attention, *last, causal=False, cu_seqlens=_cu([seqlen]), max_seqlen=seqlen)
    _check(got, ref, torch.bfloat16, "last sequence past 2**31 elements")
