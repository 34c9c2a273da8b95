"""bellm_kernels.attention (Triton) against bellm_kernels.reference.attention (float32 maths).

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), in float32 and float16;
bf16 `tl.dot` is wrong in the interpreter, so bf16 runs only on CUDA (`gpu` marker). Every launcher allocation
is poisoned with NaN, so a row the kernels forget to write fails the test. Inputs are fresh random tensors.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bellm_kernels
from bellm_kernels import reference

# the package exports the function under the module's name; the module itself is needed for monkeypatching
attention_module = importlib.import_module("bellm_kernels.attention")

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def _nan_poison(monkeypatch):
    """torch.empty / torch.empty_like return NaN-filled floating tensors during every test in this module."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))
    yield


@pytest.fixture(autouse=True)
def _triton_path(monkeypatch):
    """Kernel tests run the kernels: on CPU through the interpreter."""
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


def test_poison_is_active():
    # guards the guard: if this fails, the NaN checks below could not catch unwritten rows
    assert torch.isnan(torch.empty(3)).all() and torch.isnan(torch.empty_like(torch.zeros(2))).all()


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def _qkv(shape_q, kv_heads, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    shape_kv = (*shape_q[:-2], kv_heads, shape_q[-1])
    q = torch.randn(shape_q, generator=g)
    k = torch.randn(shape_kv, generator=g)
    v = torch.randn(shape_kv, generator=g)
    do = torch.randn(shape_q, generator=g)
    return [x.to(device=device, dtype=dtype) for x in (q, k, v, do)]


def _run(fn, q, k, v, do, **kw):
    """Output and (dq, dk, dv) of ``fn`` for one shared upstream grad ``do``."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kw)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def _check(got, ref, dtype, what=""):
    """No NaN anywhere, and every tensor within ``TOL[dtype]`` of the reference relative to its scale."""
    names = ("out", "dq", "dk", "dv")
    for name, a, b in zip(names, got, ref):
        assert a.dtype == dtype, f"{what} {name}: dtype {a.dtype}, expected {dtype}"
        assert a.shape == b.shape, f"{what} {name}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        assert not torch.isnan(a).any(), f"{what} {name}: NaN in the kernel result"
        err = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
        scale = max(1.0, b.float().abs().max().item()) if b.numel() else 1.0
        assert err <= TOL[dtype] * scale, f"{what} {name}: max abs error {err:.3g} > {TOL[dtype] * scale:.3g}"


def _compare(q, k, v, do, **kw):
    got = _run(bellm_kernels.attention, q, k, v, do, **kw)
    ref = _run(reference.attention, q.float(), k.float(), v.float(), do.float(), **kw)
    _check(got, ref, q.dtype, what=str({k_: v_ for k_, v_ in kw.items() if not torch.is_tensor(v_)}))
    return got, ref


def _mask(kind: str, batch: int, seqlen: int) -> torch.Tensor | None:
    """Padding masks, 1 = real token: none, left, right, mixed (left, right, none, a hole, fully padded)."""
    if kind == "none":
        return None
    m = torch.ones(batch, seqlen, dtype=torch.bool)
    cut = [max(1, seqlen // 3), max(1, seqlen // 2), 1][:batch]
    for b, c in enumerate(cut):
        if kind == "left":
            m[b, : seqlen - c] = False
        elif kind == "right":
            m[b, c:] = False
    if kind == "mixed":
        m[0, : seqlen // 3] = False  # left padding
        m[1, seqlen // 2 :] = False  # right padding
        if batch > 2:
            m[2] = False  # a fully padded row
        if batch > 3:
            m[3, seqlen // 4] = False  # a hole
    return m.to(DEVICE)


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)


# ------------------------------------------------------------------------------------------------------------
# padded, packed, GQA, head dims, lengths
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("padding", ["none", "left", "right", "mixed"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_padded(causal, padding, dtype):
    batch = 4 if padding == "mixed" else 3
    q, k, v, do = _qkv((batch, 33, 4, 64), 2, dtype, seed=hash((causal, padding)) % 1000)
    mask = _mask(padding, batch, 33)
    (out, dq, _, _), _ = _compare(q, k, v, do, causal=causal, attention_mask=mask)
    if mask is not None:
        pad = ~mask
        assert (out[pad] == 0).all() and (dq[pad] == 0).all(), "padded query rows: zero output and grad"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_packed_mixed_lengths(causal, dtype):
    lengths = [1, 7, 0, 33, 129, 0]
    q, k, v, do = _qkv((sum(lengths), 4, 64), 2, dtype, seed=7)
    _compare(q, k, v, do, causal=causal, cu_seqlens=_cu(lengths), max_seqlen=129)


@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_gqa_and_head_dims(group, head_dim):
    lengths = [7, 33, 1, 20]
    q, k, v, do = _qkv((sum(lengths), 4, head_dim), 4 // group, torch.float32, seed=group * head_dim)
    _compare(q, k, v, do, causal=(group + head_dim) % 2 == 0, cu_seqlens=_cu(lengths), max_seqlen=33)


@pytest.mark.parametrize("head_dim", [32, 96, 256])
def test_other_head_dims(head_dim):
    q, k, v, do = _qkv((2, 19, 2, head_dim), 1, torch.float32, seed=head_dim)
    _compare(q, k, v, do, causal=True, attention_mask=_mask("right", 2, 19))


@pytest.mark.parametrize("seqlen", [1, 7, 33, 129])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_lengths_dense(causal, seqlen):
    q, k, v, do = _qkv((2, seqlen, 2, 64), 1, torch.float32, seed=seqlen)
    _compare(q, k, v, do, causal=causal)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_packed_equals_padded(causal):
    """The same sentences, packed and padded (right and left), give the same outputs and gradients."""
    lengths = [5, 33, 1, 17]
    q, k, v, do = _qkv((sum(lengths), 2, 64), 1, torch.float32, seed=3)
    packed = _run(bellm_kernels.attention, q, k, v, do, causal=causal, cu_seqlens=_cu(lengths), max_seqlen=33)
    for side in ("right", "left"):
        seqlen = max(lengths)
        mask = torch.zeros(len(lengths), seqlen, dtype=torch.bool, device=DEVICE)
        index = []
        for b, n in enumerate(lengths):
            cols = range(seqlen - n, seqlen) if side == "left" else range(n)
            mask[b, list(cols)] = True
            index += [b * seqlen + c for c in cols]
        index = torch.tensor(index, device=DEVICE)

        def pad(x, index=index, seqlen=seqlen):
            out = x.new_zeros((len(lengths) * seqlen, *x.shape[1:]))
            out[index] = x
            return out.reshape(len(lengths), seqlen, *x.shape[1:])

        padded = _run(
            bellm_kernels.attention, pad(q), pad(k), pad(v), pad(do), causal=causal, attention_mask=mask
        )
        for name, a, b in zip(("out", "dq", "dk", "dv"), packed, padded):
            b = b.reshape(-1, *b.shape[2:])[index]
            torch.testing.assert_close(
                a, b, atol=1e-5, rtol=1e-5, msg=lambda m, n=name, s=side: f"{n} {s}: {m}"
            )


def test_fully_padded_batch_and_int_mask():
    """Every row padded, and a 0/1 int mask: zeros and zero grads, never NaN."""
    q, k, v, do = _qkv((2, 9, 2, 32), 2, torch.float32, seed=1)
    mask = torch.zeros(2, 9, dtype=torch.int64, device=DEVICE)
    out, dq, dk, dv = _run(bellm_kernels.attention, q, k, v, do, causal=False, attention_mask=mask)
    for name, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert (t == 0).all(), f"{name} must be zero when every token is padding"
    mask[0, 2:7] = 1
    _compare(q, k, v, do, causal=True, attention_mask=mask)


def test_empty_sequences_packed():
    """Zero-length sequences (also all of them, and no tokens at all) give zeros, never NaN."""
    lengths = [0, 3, 0, 0, 5, 0]
    q, k, v, do = _qkv((8, 2, 32), 1, torch.float32, seed=2)
    _compare(q, k, v, do, causal=False, cu_seqlens=_cu(lengths), max_seqlen=5)
    q, k, v, do = _qkv((0, 2, 32), 1, torch.float32)
    out, dq, dk, dv = _run(
        bellm_kernels.attention, q, k, v, do, causal=True, cu_seqlens=_cu([0, 0]), max_seqlen=0
    )
    assert out.shape == (0, 2, 32) and dq.shape == (0, 2, 32) and dk.shape == (0, 1, 32)


def test_max_seqlen_upper_bound_and_custom_scale():
    lengths = [4, 11]
    q, k, v, do = _qkv((15, 2, 32), 2, torch.float32, seed=4)
    _compare(q, k, v, do, causal=True, cu_seqlens=_cu(lengths), max_seqlen=64, scale=0.3)


def test_strided_inputs():
    """transformers hands (batch, heads, seqlen, head_dim); its transpose is a non-contiguous view."""
    q, k, v, do = _qkv((2, 21, 4, 64), 2, torch.float32, seed=5)
    q, k, v, do = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v, do))
    assert not q.is_contiguous()
    _compare(q, k, v, do, causal=False, attention_mask=_mask("left", 2, 21))


def test_no_grad_forward_only():
    q, k, v, _ = _qkv((2, 10, 2, 32), 1, torch.float16, seed=6)
    with torch.no_grad():
        out = bellm_kernels.attention(q, k, v, causal=True)
    ref = reference.attention(q.float(), k.float(), v.float(), causal=True)
    assert (out.float() - ref).abs().max().item() < 1e-2


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 3),
    seqlen=st.integers(1, 24),
    kv_heads=st.integers(1, 2),
    group=st.sampled_from([1, 2]),
    head_dim=st.sampled_from([16, 32, 48]),
    causal=st.booleans(),
    packed=st.booleans(),
    data=st.data(),
)
def test_property_random_shapes_and_masks(batch, seqlen, kv_heads, group, head_dim, causal, packed, data):
    heads = kv_heads * group
    if packed:
        lengths = data.draw(st.lists(st.integers(0, seqlen), min_size=batch, max_size=batch), label="lengths")
        q, k, v, do = _qkv((sum(lengths), heads, head_dim), kv_heads, torch.float32, seed=seqlen)
        _compare(q, k, v, do, causal=causal, cu_seqlens=_cu(lengths), max_seqlen=max(lengths))
    else:
        n = batch * seqlen
        bits = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="mask")
        mask = torch.tensor(bits, dtype=torch.bool, device=DEVICE).reshape(batch, seqlen)
        q, k, v, do = _qkv((batch, seqlen, heads, head_dim), kv_heads, torch.float32, seed=seqlen)
        _compare(q, k, v, do, causal=causal, attention_mask=mask)


# ------------------------------------------------------------------------------------------------------------
# dispatch and bad input
# ------------------------------------------------------------------------------------------------------------


def test_cpu_without_interpreter_runs_cpu_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")

    def boom(*args, **kwargs):
        raise AssertionError("the Triton path ran on a CPU tensor without TRITON_INTERPRET=1")

    monkeypatch.setattr(attention_module, "_attn_fwd", boom)
    monkeypatch.setattr(attention_module, "_attn_bwd", boom)
    q, k, v, do = _qkv((1, 5, 2, 32), 1, torch.float32, device="cpu")
    _check(_run(bellm_kernels.attention, q, k, v, do, causal=True),
           _run(reference.attention, q, k, v, do, causal=True), torch.float32)


def _bad_inputs():
    """(id, kwargs-builder, exception, message fragment)."""
    f32, dev = torch.float32, DEVICE

    def qkv(shape=(2, 6, 4, 32), kv=2, dtype=f32):
        q, k, v, _ = _qkv(shape, kv, dtype)
        return q, k, v

    def packed(lengths=(2, 4), heads=4, kv=2, d=32):
        q, k, v, _ = _qkv((sum(lengths), heads, d), kv, f32)
        return dict(q=q, k=k, v=v, causal=True, cu_seqlens=_cu(list(lengths)), max_seqlen=max(lengths))

    def padded(**over):
        q, k, v = qkv()
        return {**dict(q=q, k=k, v=v, causal=False), **over}

    cases = [
        ("int-dtype", lambda: padded(q=qkv()[0].to(torch.int32)), TypeError, "dtype torch.int32"),
        ("float64", lambda: dict(zip("qkv", qkv(dtype=torch.float64)), causal=True), TypeError, "float64"),
        ("dtype-mismatch", lambda: padded(k=qkv()[1].half()), TypeError, "k has dtype torch.float16"),
        ("not-a-tensor", lambda: padded(v=[1.0]), TypeError, "v must be a torch.Tensor"),
        ("causal-not-bool", lambda: padded(causal=None), TypeError, "causal must be True or False"),
        ("bad-scale", lambda: padded(scale=-1.0), ValueError, "scale must be a positive"),
        ("rank-padded", lambda: padded(q=qkv()[0][0]), ValueError, "pass cu_seqlens and max_seqlen"),
        ("rank-packed", lambda: {**packed(), "q": qkv()[0]}, ValueError, "(total_tokens, heads, head_dim)"),
        ("k-v-shape", lambda: padded(v=qkv()[2][:, :5]), ValueError, "k and v must have one shape"),
        ("q-k-tokens", lambda: padded(q=qkv()[0][:, :5]), ValueError, "token dimensions"),
        ("head-dim-mismatch", lambda: padded(q=qkv(shape=(2, 6, 4, 64))[0]), ValueError, "head_dim 64"),
        (
            "heads-not-divisible",
            lambda: dict(zip("qkv", qkv(shape=(2, 6, 3, 32), kv=2)), causal=True),
            ValueError,
            "multiple of kv_heads",
        ),
        (
            "head-dim-300",
            lambda: dict(zip("qkv", qkv(shape=(1, 3, 2, 300), kv=1)), causal=True),
            ValueError,
            "head_dim = 300",
        ),
        (
            "head-dim-20",
            lambda: dict(zip("qkv", qkv(shape=(1, 3, 2, 20), kv=1)), causal=True),
            ValueError,
            "head_dim = 20",
        ),
        ("cu-int64", lambda: {**packed(), "cu_seqlens": _cu([2, 4]).long()}, TypeError, "int32"),
        ("cu-start", lambda: {**packed(), "cu_seqlens": _cu([2, 4]) + 1}, ValueError, "start at 0"),
        (
            "cu-decreasing",
            lambda: {**packed(), "cu_seqlens": torch.tensor([0, 4, 2, 6], dtype=torch.int32, device=dev)},
            ValueError,
            "non-decreasing",
        ),
        ("cu-total", lambda: {**packed(), "cu_seqlens": _cu([2, 3])}, ValueError, "total_tokens"),
        ("cu-2d", lambda: {**packed(), "cu_seqlens": _cu([2, 4])[None]}, ValueError, "1-D"),
        (
            "mask-and-cu",
            lambda: {**packed(), "attention_mask": torch.ones(1, 6, dtype=torch.bool, device=dev)},
            ValueError,
            "not both",
        ),
        ("cu-without-max", lambda: {**packed(), "max_seqlen": None}, ValueError, "needs max_seqlen"),
        ("max-without-cu", lambda: padded(max_seqlen=6), ValueError, "without cu_seqlens"),
        ("max-too-small", lambda: {**packed(), "max_seqlen": 3}, ValueError, "max_seqlen = 3"),
        ("max-not-int", lambda: {**packed(), "max_seqlen": 4.0}, TypeError, "must be a Python int"),
        (
            "mask-shape",
            lambda: padded(attention_mask=torch.ones(2, 5, dtype=torch.bool, device=dev)),
            ValueError,
            "(batch, seqlen) = (2, 6)",
        ),
        ("mask-float", lambda: padded(attention_mask=torch.ones(2, 6, device=dev)), TypeError, "bool or 0/1"),
    ]
    if HAS_CUDA:
        cases.append(("device-mismatch", lambda: padded(k=qkv()[1].cpu()), ValueError, "different devices"))
    else:
        cases.append(
            (
                "device-mismatch",
                lambda: padded(attention_mask=torch.ones(2, 6, dtype=torch.bool, device="meta")),
                ValueError,
                "different devices",
            )
        )
    return cases


@pytest.mark.parametrize("interpret", ["1", "0"], ids=["triton-path", "cpu-path"])
@pytest.mark.parametrize("build,exc,fragment", [pytest.param(*c[1:], id=c[0]) for c in _bad_inputs()])
def test_bad_input(build, exc, fragment, interpret, monkeypatch):
    """A clear error naming the value and the fix, before any launch, on both dispatch paths."""
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
    elif interpret == "0":
        pytest.skip("CUDA tensors always take the Triton path")

    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel was launched before the input checks failed")

    monkeypatch.setattr(attention_module, "_attn_fwd", no_launch)
    monkeypatch.setattr(attention_module.cpu, "attention", no_launch)
    kwargs = build()
    with pytest.raises(exc) as info:
        bellm_kernels.attention(**kwargs)
    assert fragment in str(info.value), f"message {str(info.value)!r} lacks {fragment!r}"


# ------------------------------------------------------------------------------------------------------------
# GPU only
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
def test_gpu_packed_and_padded(head_dim, causal, dtype):
    lengths = [1, 7, 0, 33, 129, 300, 64]
    q, k, v, do = _qkv((sum(lengths), 8, head_dim), 2, dtype, seed=head_dim)
    _compare(q, k, v, do, causal=causal, cu_seqlens=_cu(lengths), max_seqlen=300)
    q, k, v, do = _qkv((4, 200, 8, head_dim), 4, dtype, seed=head_dim + 1)
    _compare(q, k, v, do, causal=causal, attention_mask=_mask("mixed", 4, 200))


@pytest.mark.gpu
def test_gpu_fp32_is_not_tf32():
    q, k, v, do = _qkv((2, 300, 4, 128), 2, torch.float32, seed=11)
    _compare(q, k, v, do, causal=False)


@pytest.mark.gpu
def test_gpu_new_lengths_do_not_retune_or_recompile():
    """After one warm call, new packed lengths (and max_seqlen) must reuse the tuned config and compiled
    kernel."""

    def call(lengths):
        q, k, v, do = _qkv((sum(lengths), 8, 64), 2, torch.bfloat16, seed=len(lengths))
        _run(
            bellm_kernels.attention,
            q,
            k,
            v,
            do,
            causal=True,
            cu_seqlens=_cu(lengths),
            max_seqlen=max(lengths),
        )

    def compiled():
        counts = []
        for kind, kernel in attention_module._KERNELS.items():
            tuner = attention_module._tuned_kernel(kind, 64, 2, torch.cuda.get_device_capability())
            counts.append(len(tuner.cache))
            try:  # Triton's private compile cache: (kernel_cache, ...) per device
                counts.append(sum(len(c[0]) for c in kernel.device_caches.values()))
            except (AttributeError, TypeError, IndexError, KeyError):
                pass
        return counts

    call([17, 100, 3])
    before = compiled()
    call([5, 1, 250, 77, 31])
    call([1000, 2])
    assert compiled() == before


@pytest.mark.gpu
def test_gpu_large_values_no_overflow():
    """Large logits (scale 1) must not overflow the online softmax."""
    q, k, v, do = _qkv((2, 64, 2, 64), 2, torch.bfloat16, seed=12)
    q = q * 8
    _compare(q, k, v, do, causal=True, scale=1.0)
    assert math.isfinite(bellm_kernels.attention(q, k, v, causal=False).float().abs().max().item())
