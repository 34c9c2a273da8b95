"""bellm_kernels.pool against bellm_kernels.reference.pool.

Without CUDA the Triton kernels run in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1). Every
kernel buffer is poisoned with NaN (integers with -7) through ``pool._alloc``, so an element a kernel forgets
to write fails the comparison. Inputs are fresh random normals, never zeros; upstream gradients are random.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from bellm_kernels import pool, reference

# the package re-exports the function under the module's name, so fetch the module itself
pool_mod = importlib.import_module("bellm_kernels.pool")

MODES = ("mean", "last", "first")
LENGTHS = (1, 7, 33, 129)
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    def alloc(shape, dtype, device):
        if dtype.is_floating_point:
            return torch.full(shape, float("nan"), dtype=dtype, device=device)
        return torch.full(shape, -7, dtype=dtype, device=device)

    monkeypatch.setattr(pool_mod, "_alloc", alloc)


def _tol(dtype):
    return {torch.float32: (2e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}[dtype]


def _padded_mask(lengths, side, seqlen, device):
    """(batch, seqlen) bool; side in left / right / mixed (rows alternate right, left, and a centred span)."""
    mask = torch.zeros(len(lengths), seqlen, dtype=torch.bool, device=device)
    for i, n in enumerate(lengths):
        row_side = side if side != "mixed" else ("right", "left", "centre")[i % 3]
        lo = {"right": 0, "left": seqlen - n, "centre": (seqlen - n) // 2}[row_side]
        mask[i, lo : lo + n] = True
    return mask


def _make(layout, lengths, dim, dtype, with_pool_mask, seed=0, device=DEVICE):
    """Random inputs: returns (hidden, kwargs) for pool / reference.pool."""
    g = torch.Generator().manual_seed(seed)
    if layout == "packed":
        total = sum(lengths)
        hidden = torch.randn(total, dim, generator=g).to(device=device, dtype=dtype)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        kwargs = {"cu_seqlens": cu}
        token_shape = (total,)
    else:
        seqlen = max(lengths) + 3  # every row has some padding
        hidden = torch.randn(len(lengths), seqlen, dim, generator=g).to(device=device, dtype=dtype)
        kwargs = {"attention_mask": _padded_mask(lengths, layout, seqlen, device)}
        token_shape = (len(lengths), seqlen)
    if with_pool_mask:
        kwargs["pool_mask"] = (torch.rand(token_shape, generator=g) > 0.4).to(device)
    return hidden, kwargs


def _check(hidden, kwargs, mode, normalize, seed=0):
    """Forward and backward of pool vs the reference on the same inputs and the same random upstream grad."""
    atol, rtol = _tol(hidden.dtype)
    h_ker = hidden.clone().requires_grad_()
    h_ref = hidden.clone().requires_grad_()
    out = pool(h_ker, mode=mode, normalize=normalize, **kwargs)
    ref = reference.pool(h_ref, mode=mode, normalize=normalize, **kwargs)
    assert out.dtype == hidden.dtype and out.shape == ref.shape
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    g = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn(ref.shape, generator=g).to(device=hidden.device, dtype=hidden.dtype)
    out.backward(grad)
    ref.backward(grad)
    assert not h_ker.grad.isnan().any()
    torch.testing.assert_close(h_ker.grad.float(), h_ref.grad.float(), atol=atol, rtol=rtol)
    return out, h_ker.grad


@pytest.mark.parametrize("with_pool_mask", [False, True], ids=["all", "pool_mask"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "norm"])
@pytest.mark.parametrize("layout", ["right", "left", "mixed", "packed"])
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode, layout, normalize, with_pool_mask):
    hidden, kwargs = _make(layout, LENGTHS, 80, torch.float32, with_pool_mask)
    _check(hidden, kwargs, mode, normalize)


@pytest.mark.parametrize("dim", [64, 576])
@pytest.mark.parametrize("layout", ["mixed", "packed"])
@pytest.mark.parametrize("mode", MODES)
def test_dims_fp16(mode, layout, dim):
    hidden, kwargs = _make(layout, (1, 7, 33), dim, torch.float16, with_pool_mask=(mode == "mean"), seed=dim)
    _check(hidden, kwargs, mode, normalize=(layout == "packed"))


@pytest.mark.parametrize(
    ("mode", "layout", "normalize"),
    [("mean", "left", True), ("last", "packed", True), ("first", "right", False)],
)
def test_dim_4096(mode, layout, normalize):
    hidden, kwargs = _make(layout, (1, 7), 4096, torch.float16, with_pool_mask=False, seed=3)
    _check(hidden, kwargs, mode, normalize)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_packed_equals_padded(mode, normalize):
    lengths = (7, 1, 33, 5)
    packed, kw_packed = _make("packed", lengths, 80, torch.float32, with_pool_mask=True, seed=5)
    seqlen = max(lengths)
    mask = _padded_mask(lengths, "right", seqlen, packed.device)
    padded = packed.new_zeros(len(lengths), seqlen, 80)
    padded[mask] = packed
    pool_mask = torch.zeros_like(mask)
    pool_mask[mask] = kw_packed["pool_mask"]
    hp = packed.clone().requires_grad_()
    hd = padded.clone().requires_grad_()
    out_p = pool(hp, mode=mode, normalize=normalize, **kw_packed)
    out_d = pool(hd, mode=mode, normalize=normalize, attention_mask=mask, pool_mask=pool_mask)
    torch.testing.assert_close(out_p, out_d, atol=1e-6, rtol=1e-6)
    grad = torch.randn_like(out_p)
    out_p.backward(grad)
    out_d.backward(grad)
    torch.testing.assert_close(hp.grad, hd.grad[mask], atol=1e-6, rtol=1e-6)
    assert (hd.grad[~mask] == 0).all()


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_empty_sequences_give_zeros(mode, normalize):
    dim = 80
    # packed: zero-length sequences first, in the middle and last
    hidden = torch.randn(12, dim, device=DEVICE)
    cu = torch.tensor([0, 0, 5, 5, 12, 12], dtype=torch.int32, device=DEVICE)
    out, grad = _check(hidden, {"cu_seqlens": cu}, mode, normalize)
    assert (out[[0, 2, 4]] == 0).all()
    assert (out[[1, 3]] != 0).any(dim=-1).all()
    # padded: an all-zero attention_mask row, and a pool_mask excluding every token of another row
    hidden = torch.randn(3, 9, dim, device=DEVICE)
    mask = torch.ones(3, 9, dtype=torch.bool, device=DEVICE)
    mask[1] = False
    pool_mask = torch.ones_like(mask)
    pool_mask[2] = False
    out, grad = _check(hidden, {"attention_mask": mask, "pool_mask": pool_mask}, mode, normalize)
    assert (out[1:] == 0).all() and (out[0] != 0).any()
    assert (grad[1:] == 0).all() and (grad[0] != 0).any()
    # packed with a pool_mask that empties the only sequence
    hidden = torch.randn(4, dim, device=DEVICE)
    cu = torch.tensor([0, 4], dtype=torch.int32, device=DEVICE)
    nothing = torch.zeros(4, dtype=torch.bool, device=DEVICE)
    out, grad = _check(hidden, {"cu_seqlens": cu, "pool_mask": nothing}, mode, normalize)
    assert (out == 0).all() and (grad == 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_zero_sized_inputs(mode):
    """seqlen 0, no sequence, one empty sequence and no token, dim 0: zeros of the right shape."""
    cases = [
        (torch.randn(2, 0, 16), {"attention_mask": torch.ones(2, 0, dtype=torch.bool)}, (2, 16)),
        (torch.randn(0, 16), {"cu_seqlens": torch.tensor([0], dtype=torch.int32)}, (0, 16)),
        (torch.randn(0, 16), {"cu_seqlens": torch.tensor([0, 0], dtype=torch.int32)}, (1, 16)),
        (torch.randn(5, 0), {"cu_seqlens": torch.tensor([0, 5], dtype=torch.int32)}, (1, 0)),
    ]
    for hidden, kwargs, shape in cases:
        hidden = hidden.to(DEVICE).requires_grad_()
        kwargs = {k: v.to(DEVICE) for k, v in kwargs.items()}
        out = pool(hidden, mode=mode, normalize=True, **kwargs)
        assert tuple(out.shape) == shape and (out == 0).all()
        out.sum().backward()
        assert hidden.grad.shape == hidden.shape


def test_last_and_first_pick_the_right_rows_and_grad_only_there():
    """Independent of the reference: last/first gradients are non-zero on exactly the selected row."""
    hidden = torch.randn(2, 6, 64, device=DEVICE, requires_grad=True)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 0, 1, 0, 1, 1]], dtype=torch.bool, device=DEVICE)
    for mode, rows in (("last", [4, 5]), ("first", [2, 0])):
        hidden.grad = None
        out = pool(hidden, mode=mode, attention_mask=mask)
        torch.testing.assert_close(out, hidden.detach()[[0, 1], rows])
        out.sum().backward()
        nonzero = (hidden.grad != 0).any(dim=-1)
        expected = torch.zeros_like(nonzero)
        expected[[0, 1], rows] = True
        assert torch.equal(nonzero, expected)


def test_integer_masks_and_strided_hidden():
    base = torch.randn(3, 20, 2, 96, device=DEVICE)
    hidden = base[:, 2:18, 1, :80]  # (3, 16, 80), row strides larger than dim
    assert not hidden.is_contiguous() and hidden.stride(-1) == 1
    mask = torch.randint(0, 2, (3, 16), device=DEVICE)
    mask[:, 0] = 1
    pool_mask = torch.randint(0, 2, (3, 16), device=DEVICE, dtype=torch.int32)
    for mode in MODES:
        _check(hidden, {"attention_mask": mask, "pool_mask": pool_mask}, mode, normalize=True)
    transposed = torch.randn(80, 10, device=DEVICE).t()  # (10, 80) with stride(-1) != 1: copied
    cu = torch.tensor([0, 3, 10], dtype=torch.int32, device=DEVICE)
    _check(transposed, {"cu_seqlens": cu}, "mean", normalize=False)


def test_cpu_without_interpreter_runs_cpu_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")

    def no_kernel(*args, **kwargs):
        raise AssertionError("the Triton path ran on a CPU tensor without TRITON_INTERPRET=1")

    monkeypatch.setattr(pool_mod, "_launch_pool", no_kernel)
    hidden, kwargs = _make("mixed", (3, 7), 64, torch.float32, with_pool_mask=True, device="cpu")
    out = pool(hidden, mode="mean", normalize=True, **kwargs)
    torch.testing.assert_close(out, reference.pool(hidden, mode="mean", normalize=True, **kwargs))


def _bad_inputs():
    h3 = torch.randn(2, 5, 16)
    h2 = torch.randn(7, 16)
    mask = torch.ones(2, 5, dtype=torch.bool)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    return [
        ("mode", (h3,), {"mode": "max", "attention_mask": mask}, ValueError, "'mean', 'last', 'first'"),
        ("mode-type", (h3,), {"mode": None, "attention_mask": mask}, ValueError, "unknown pooling mode None"),
        ("both", (h2,), {"mode": "mean", "attention_mask": mask, "cu_seqlens": cu}, ValueError, "both"),
        ("neither", (h2,), {"mode": "mean"}, ValueError, "neither"),
        ("padded-rank", (h2,), {"mode": "mean", "attention_mask": mask}, ValueError, "(7, 16)"),
        ("packed-rank", (h3,), {"mode": "mean", "cu_seqlens": cu}, ValueError, "(2, 5, 16)"),
        ("mask-shape", (h3,), {"mode": "mean", "attention_mask": mask[:, :4]}, ValueError, "(2, 4)"),
        ("mask-float", (h3,), {"mode": "mean", "attention_mask": mask.float()}, TypeError, "torch.float32"),
        (
            "pool-mask-shape",
            (h3,),
            {"mode": "mean", "attention_mask": mask, "pool_mask": mask[:1]},
            ValueError,
            "pool_mask has shape (1, 5)",
        ),
        (
            "pool-mask-packed-shape",
            (h2,),
            {"mode": "mean", "cu_seqlens": cu, "pool_mask": torch.ones(6)},
            ValueError,
            "pool_mask has shape (6,)",
        ),
        (
            "pool-mask-packed-float",
            (h2,),
            {"mode": "mean", "cu_seqlens": cu, "pool_mask": torch.ones(7)},
            TypeError,
            "torch.float32",
        ),
        ("cu-dtype", (h2,), {"mode": "mean", "cu_seqlens": cu.long()}, TypeError, "int32"),
        (
            "cu-total",
            (h2,),
            {"mode": "mean", "cu_seqlens": torch.tensor([0, 3, 6], dtype=torch.int32)},
            ValueError,
            "cu_seqlens[-1] = 6",
        ),
        (
            "cu-start",
            (h2,),
            {"mode": "mean", "cu_seqlens": torch.tensor([1, 3, 7], dtype=torch.int32)},
            ValueError,
            "cu_seqlens[0] = 1",
        ),
        (
            "cu-decreasing",
            (h2,),
            {"mode": "mean", "cu_seqlens": torch.tensor([0, 5, 3, 7], dtype=torch.int32)},
            ValueError,
            "non-decreasing",
        ),
        ("dtype", (h3.double(),), {"mode": "mean", "attention_mask": mask}, TypeError, "torch.float64"),
        ("not-tensor", (h3.tolist(),), {"mode": "mean", "attention_mask": mask}, TypeError, "list"),
        (
            "normalize-type",
            (h3,),
            {"mode": "mean", "attention_mask": mask, "normalize": "yes"},
            TypeError,
            "'yes'",
        ),
        ("device", (h3,), {"mode": "mean", "attention_mask": mask.to("meta")}, ValueError, "meta"),
    ]


@pytest.mark.parametrize("interpret", ["1", "0"], ids=["triton-path", "cpu-path"])
@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "fragment"),
    [case[1:] for case in _bad_inputs()],
    ids=[case[0] for case in _bad_inputs()],
)
def test_bad_input(monkeypatch, interpret, args, kwargs, exc, fragment):
    monkeypatch.setenv("TRITON_INTERPRET", interpret)

    def no_launch(*a, **k):
        raise AssertionError("a kernel was launched before the input check")

    monkeypatch.setattr(pool_mod, "_launch_pool", no_launch)
    monkeypatch.setattr(pool_mod.cpu, "pool", no_launch)
    with pytest.raises(exc) as info:
        pool(*args, **kwargs)
    assert fragment in str(info.value)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("layout", ["mixed", "packed"])
@pytest.mark.parametrize("mode", MODES)
def test_gpu_matches_reference(mode, layout, normalize, dtype):
    for dim in (80, 4096):
        hidden, kwargs = _make(
            layout, (1, 7, 33, 129, 1000), dim, dtype, with_pool_mask=(mode == "mean"), device="cuda"
        )
        _check(hidden, kwargs, mode, normalize)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_gpu_empty_sequences_bf16(mode):
    hidden = torch.randn(300, 576, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, 0, 100, 100, 300, 300], dtype=torch.int32, device="cuda")
    out, grad = _check(hidden, {"cu_seqlens": cu}, mode, normalize=True)
    assert (out[[0, 2, 4]] == 0).all()
