"""The CPU path (bellm_kernels.cpu, PyTorch SDPA) against bellm_kernels.reference, through the public ops.

Float32 on fresh random inputs, outputs and gradients, every layout: dense, padded (left, right, mixed with a
hole and a fully padded row), packed varlen (zero-length sequences, equal-length runs that are views, groups
that are gathered), GQA, causal and bidirectional. ``TRITON_INTERPRET=0`` for every test here, so the public
ops dispatch to the CPU path; the Triton launchers are replaced by a guard that fails if they run.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import bellm_kernels
from bellm_kernels import cpu, reference

attention_module = importlib.import_module("bellm_kernels.attention")
pool_module = importlib.import_module("bellm_kernels.pool")

TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def _cpu_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")

    def no_triton(*args, **kwargs):
        raise AssertionError("a Triton launcher ran on the CPU path")

    for name in ("_attn_fwd", "_attn_bwd"):
        monkeypatch.setattr(attention_module, name, no_triton)
    monkeypatch.setattr(pool_module, "_launch_pool", no_triton)
    yield


def _qkv(shape_q, kv_heads, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shape_kv = (*shape_q[:-2], kv_heads, shape_q[-1])
    return [torch.randn(s, generator=g).to(dtype) for s in (shape_q, shape_kv, shape_kv, shape_q)]


def _run(fn, q, k, v, do, **kw):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kw)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def _sdpa_path(q, k, v, *, causal, scale=None, cu_seqlens=None, max_seqlen=None, attention_mask=None):
    """bellm_kernels.cpu.attention with gradients from SDPA's own backward (no eager-order training path)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return cpu.attention(q, k, v, causal=causal, scale=scale, cu_seqlens=cu_seqlens, attention_mask=attention_mask)


def _custom_op(q, k, v, *, causal, scale=None, cu_seqlens=None, max_seqlen=None, attention_mask=None):
    """The custom op itself (what torch.compile runs), its backward the op ``bellm::attention_bwd``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return attention_module._attention_fwd_op(q, k, v, causal, scale, cu_seqlens, max_seqlen, attention_mask,
                                              True)[0]


PATHS = {"op": bellm_kernels.attention, "sdpa": _sdpa_path, "custom-op": _custom_op}


def _compare(q, k, v, do, path="op", **kw):
    """``op``: the public function (gradients wanted, so short inputs take the eager-order path);
    ``custom-op``: the registered op and its backward op; ``sdpa``: the SDPA path and its autograd."""
    got = _run(PATHS[path], q, k, v, do, **kw)
    ref = _run(reference.attention, q.float(), k.float(), v.float(), do.float(), **kw)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert a.dtype == q.dtype and a.shape == b.shape, name
        assert not torch.isnan(a).any(), f"{name}: NaN"
        err = (a.float() - b).abs().max().item() if a.numel() else 0.0
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        assert err <= TOL[q.dtype] * scale, f"{name}: max abs error {err:.3g}"
    return got


def _mask(kind: str, batch: int, seqlen: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    m = torch.ones(batch, seqlen, dtype=torch.bool)
    if kind == "left":
        m[0, : seqlen // 3] = False
        m[2, : seqlen - 1] = False
    elif kind == "right":
        m[0, seqlen // 2 :] = False
        m[1, 1:] = False
        m[3] = False  # a fully padded row
    elif kind == "mixed":
        m[0, : seqlen // 3] = False
        m[1, seqlen // 2 :] = False
        m[2] = False
        m[3, seqlen // 4] = False  # a hole
    return m


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("path", ["op", "custom-op", "sdpa"])
@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("padding", ["none", "left", "right", "mixed"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_padded(causal, padding, group, path):
    kv_heads = 2
    seed = ["none", "left", "right", "mixed"].index(padding)
    q, k, v, do = _qkv((4, 13, kv_heads * group, 32), kv_heads, seed=seed)
    mask = _mask(padding, 4, 13)
    out = _compare(q, k, v, do, path, causal=causal, attention_mask=mask)[0]
    if mask is not None:
        assert (out[~mask] == 0).all(), "padded query rows must be exactly zero"


@pytest.mark.parametrize(
    "lengths",
    [
        [37],  # one sequence: a view, no mask
        [6, 6, 6, 6],  # equal lengths covering everything: one view
        [5, 0, 17, 3, 17, 17, 1, 9, 8, 0],  # zero-length, runs of equal length, gathered groups
        [40, 2, 3, 39, 1],  # far apart: separate groups
        [0, 0],  # no token at all
    ],
    ids=["single", "equal", "mixed", "spread", "empty"],
)
@pytest.mark.parametrize("path", ["op", "custom-op", "sdpa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_packed(causal, lengths, path):
    total = sum(lengths)
    q, k, v, do = _qkv((total, 6, 64), 2, seed=len(lengths))
    _compare(q, k, v, do, path, causal=causal, cu_seqlens=_cu(lengths), max_seqlen=max(lengths))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("path", ["op", "custom-op"])
def test_op_gradients_beyond_the_eager_order_bound(causal, path):
    """Sequences longer than EAGER_ORDER_MAX_LEN train through SDPA."""
    lengths = [cpu.EAGER_ORDER_MAX_LEN + 9, 40, 0, 41]
    q, k, v, do = _qkv((sum(lengths), 4, 32), 2, seed=9)
    _compare(q, k, v, do, path, causal=causal, cu_seqlens=_cu(lengths), max_seqlen=max(lengths))
    q, k, v, do = _qkv((2, cpu.EAGER_ORDER_MAX_LEN + 3, 4, 32), 4, seed=10)
    mask = torch.ones(2, cpu.EAGER_ORDER_MAX_LEN + 3, dtype=torch.bool)
    mask[1, :100] = False
    _compare(q, k, v, do, path, causal=causal, attention_mask=mask)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_packed_strided_like_transformers(causal):
    """Packed q/k/v as a patched model passes them: (T, H, D) views of (1, H, T, D) (head-major)."""
    lengths = [7, 7, 3, 12]
    total = sum(lengths)
    q, k, v, do = (x.transpose(0, 1).contiguous().transpose(0, 1) for x in _qkv((total, 4, 16), 2, seed=3))
    assert q.stride(0) == 16 and not q.is_contiguous()
    _compare(q, k, v, do, causal=causal, cu_seqlens=_cu(lengths), max_seqlen=12)


def test_bfloat16_and_custom_scale():
    q, k, v, do = _qkv((2, 9, 4, 32), 2, seed=5, dtype=torch.bfloat16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :4] = False
    _compare(q, k, v, do, causal=True, attention_mask=mask, scale=0.2)
    q, k, v, do = _qkv((20, 4, 32), 4, seed=6, dtype=torch.bfloat16)
    _compare(q, k, v, do, causal=False, cu_seqlens=_cu([8, 12]), max_seqlen=12, scale=0.2)


def test_plan_groups_bounds_padding():
    lengths = [40, 2, 0, 3, 39, 1, 20, 21]
    groups = cpu.plan_groups(lengths, max_waste=0.25)
    assert sorted(i for g in groups for i in g) == [i for i, n in enumerate(lengths) if n > 0]
    for g in groups:
        real = sum(lengths[i] for i in g)
        assert len(g) * max(lengths[i] for i in g) <= 1.25 * real
    assert cpu.plan_groups([5, 5, 5], max_waste=0.0) == [[0, 1, 2]]


def _sdpa_kernels(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_long_sequence_runs_the_blocked_kernel_without_a_mask(causal):
    """One long sequence (packed or unpadded) must reach PyTorch's blocked CPU kernel with no mask tensor: no
    (S, S) scores or mask are ever materialised."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    q, k, v, _ = _qkv((1, 1024, 6, 64), 2, seed=7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu.F, "scaled_dot_product_attention", spy)
        kernels = _sdpa_kernels(lambda: bellm_kernels.attention(q, k, v, causal=causal))
        kernels |= _sdpa_kernels(
            lambda: bellm_kernels.attention(q[0], k[0], v[0], causal=causal, cu_seqlens=_cu([1024]),
                                            max_seqlen=1024)
        )
    assert seen == [None, None]
    assert any("flash_attention" in key for key in kernels) and not any("math" in key for key in kernels), kernels


@pytest.mark.parametrize("mode", ["mean", "last", "first"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("normalize", [False, True])
def test_pool(mode, layout, normalize):
    g = torch.Generator().manual_seed(11)
    if layout == "padded":
        hidden = torch.randn(4, 9, 48, generator=g)
        mask = _mask("mixed", 4, 9)
        pool_mask = torch.rand(4, 9, generator=g) > 0.3
        kwargs = {"attention_mask": mask, "pool_mask": pool_mask}
    else:
        lengths = [5, 0, 9, 1, 4]
        hidden = torch.randn(sum(lengths), 48, generator=g)
        pool_mask = torch.rand(sum(lengths), generator=g) > 0.3
        kwargs = {"cu_seqlens": _cu(lengths), "pool_mask": pool_mask}
    grad = torch.randn(4 if layout == "padded" else 5, 48, generator=g)
    results = []
    for fn in (bellm_kernels.pool, reference.pool):
        h = hidden.clone().requires_grad_()
        out = fn(h, mode=mode, normalize=normalize, **kwargs)
        out.backward(grad)
        results.append((out.detach(), h.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
