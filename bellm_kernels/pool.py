"""Fused pooling of hidden states into one vector per sequence: mean / last / first, optional L2 norm.

Layouts (as :mod:`bellm_kernels.reference`):

- padded: ``hidden (batch, seqlen, dim)`` with ``attention_mask (batch, seqlen)``, 1 = real token, any padding
  side;
- packed: ``hidden (total_tokens, dim)`` with int32 ``cu_seqlens (num_seqs + 1,)``.

The pooled tokens of a sequence are its real tokens that are also in ``pool_mask`` when given. Output is
``(num_seqs, dim)`` in ``hidden.dtype``, accumulated in float32; a sequence with no pooled token gives zeros,
also under ``normalize`` and in the backward (zero gradient, never NaN).

Kernels (all memory-bound):

- ``_pool_fwd_kernel``, grid ``(num_seqs, cdiv(dim, BLOCK_D))``: each program walks the tokens of its sequence
  for one block of dims. Mean reads every pooled element of ``hidden`` once (masked-out rows are not loaded);
  last/first scan only the (byte) token mask to find the selected row, then read that one row. It also records
  per sequence the pooled-token count and the selected row, which the backward reuses.
- ``_l2norm_fwd_kernel`` / ``_l2norm_bwd_kernel``, grid ``(num_seqs,)``, only with ``normalize=True``: the
  norm needs the whole row, so the pooling kernel writes the pooled vector in float32 to a small
  ``(num_seqs, dim)`` buffer and this step makes two passes over that buffer (never over ``hidden``).
- ``_pool_bwd_kernel``, same grid as the forward: writes every element of ``grad_hidden`` exactly once (the
  broadcast pooled gradient for pooled rows, zeros for every other row), so the buffer needs no zero fill.

Autotuning (GPU only; the interpreter uses fixed blocks) is keyed on ``dim``, the compile-time mode flags and
the tensor dtypes, never on sequence lengths.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bellm_kernels import _checks, configs, cpu
from bellm_kernels.reference import POOL_MODES

__all__ = ["pool", "POOL_MODES"]

_MODE_IDS = {"mean": 0, "last": 1, "first": 2}
_EPS = 1e-12
# padded lengths vary per batch: never a new specialisation for them
_RUNTIME_INTS = ["seqlen", "stride_kb"]


def _alloc(shape, dtype, device) -> torch.Tensor:
    """Uninitialised kernel output buffer (the tests swap in a NaN-filled one to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


# fixed blocks for the interpreter: big enough to keep it quick, small enough that the tests cross block edges
_INTERPRET_BLOCK_T = 16
_INTERPRET_BLOCK_D = 256


# ------------------------------------------------------------------------------------------------------------
# kernels (names: i_ program indices, o_ offset vectors, m_ boolean masks, p_ pointers, b_ value tiles)
# ------------------------------------------------------------------------------------------------------------


@triton.jit
def _pool_window(cu_seqlens, i_b, seqlen, PACKED: tl.constexpr):
    """``[start, end)`` (int64) of sequence ``i_b``: its rows of a packed batch, or the ``seqlen`` positions of
    padded row ``i_b``."""
    if PACKED:
        start = tl.load(cu_seqlens + i_b).to(tl.int64)
        end = tl.load(cu_seqlens + i_b + 1).to(tl.int64)
    else:
        start = tl.zeros((), dtype=tl.int64)
        end = start + seqlen
    return start, end


@triton.jit
def _select_row(p_k0, start, end, MODE: tl.constexpr, HAS_KEEP: tl.constexpr, BLOCK_T: tl.constexpr):
    """The last (``MODE == 1``) or first (``MODE == 2``) pooled position in ``[start, end)``, -1 when none;
    with a token mask only its bytes are read (``p_k0``: the sequence's row of it)."""
    if HAS_KEEP:
        if MODE == 1:
            b_best = tl.full((BLOCK_T,), -1, dtype=tl.int64)
        else:
            b_best = tl.full((BLOCK_T,), 2147483647, dtype=tl.int64)
        for t0 in range(start, end, BLOCK_T):
            o_t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
            m_t = o_t < end
            b_k = tl.load(p_k0 + o_t, mask=m_t, other=0)
            m_t = m_t & (b_k != 0)
            if MODE == 1:
                b_best = tl.maximum(b_best, tl.where(m_t, o_t, -1))
            else:
                b_best = tl.minimum(b_best, tl.where(m_t, o_t, 2147483647))
        if MODE == 1:
            i_sel = tl.max(b_best, axis=0)
        else:
            i_sel = tl.min(b_best, axis=0)
            i_sel = tl.where(i_sel == 2147483647, -1, i_sel)
    else:
        if MODE == 1:
            i_sel = tl.where(end > start, end - 1, -1)
        else:
            i_sel = tl.where(end > start, start, -1)
    return i_sel


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _pool_fwd_kernel(
    hidden, keep, cu_seqlens, out, count, sel,
    stride_hb, stride_hs, stride_ob, stride_kb,
    seqlen, dim,
    MODE: tl.constexpr, PACKED: tl.constexpr, HAS_KEEP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1)
    start, end = _pool_window(cu_seqlens, i_b, seqlen, PACKED)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < dim
    p_h0 = hidden + i_b * stride_hb
    p_k0 = keep + i_b * stride_kb
    if MODE == 0:
        # [BLOCK_T, BLOCK_D]
        b_acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        # [BLOCK_T]
        b_cnt = tl.zeros((BLOCK_T,), dtype=tl.int32)
        for t0 in range(start, end, BLOCK_T):
            o_t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
            m_t = o_t < end
            if HAS_KEEP:
                b_k = tl.load(p_k0 + o_t, mask=m_t, other=0)
                m_t = m_t & (b_k != 0)
            p_h = p_h0 + o_t[:, None] * stride_hs + o_d[None, :]
            b_acc += tl.load(p_h, mask=m_t[:, None] & m_d[None, :], other=0.0).to(tl.float32)
            b_cnt += m_t.to(tl.int32)
        n_pooled = tl.sum(b_cnt, axis=0)
        # [BLOCK_D]
        b_out = tl.sum(b_acc, axis=0) / tl.maximum(n_pooled, 1).to(tl.float32)
        i_sel = tl.full((), -1, dtype=tl.int64)
    else:
        i_sel = _select_row(p_k0, start, end, MODE=MODE, HAS_KEEP=HAS_KEEP, BLOCK_T=BLOCK_T)
        n_pooled = (i_sel >= 0).to(tl.int32)
        p_h = p_h0 + tl.maximum(i_sel, 0) * stride_hs + o_d
        m_sel = m_d & ((tl.zeros((BLOCK_D,), dtype=tl.int64) + i_sel) >= 0)
        b_out = tl.load(p_h, mask=m_sel, other=0.0).to(tl.float32)
    tl.store(out + i_b * stride_ob + o_d, b_out.to(out.dtype.element_ty), mask=m_d)
    if i_d == 0:
        tl.store(count + i_b, n_pooled)
        tl.store(sel + i_b, i_sel)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _pool_bwd_kernel(
    grad_pooled, keep, cu_seqlens, count, sel, grad_hidden,
    stride_gb, stride_db, stride_ds, stride_kb,
    seqlen, dim,
    MODE: tl.constexpr, PACKED: tl.constexpr, HAS_KEEP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1)
    start, end = _pool_window(cu_seqlens, i_b, seqlen, PACKED)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < dim
    # [BLOCK_D]
    b_g = tl.load(grad_pooled + i_b * stride_gb + o_d, mask=m_d, other=0.0).to(tl.float32)
    # an empty sequence (count 0 / sel -1) selects no row; zero its (eps-divided) pooled grad anyway
    if MODE == 0:
        n_pooled = tl.load(count + i_b)
        b_g = tl.where(n_pooled > 0, b_g / tl.maximum(n_pooled, 1).to(tl.float32), 0.0)
    else:
        i_sel = tl.load(sel + i_b)
        b_g = tl.where(i_sel >= 0, b_g, 0.0)
    b_g = b_g.to(grad_hidden.dtype.element_ty)
    p_d0 = grad_hidden + i_b * stride_db
    p_k0 = keep + i_b * stride_kb
    for t0 in range(start, end, BLOCK_T):
        o_t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        m_t = o_t < end
        if MODE == 0:
            if HAS_KEEP:
                b_k = tl.load(p_k0 + o_t, mask=m_t, other=0)
                m_take = b_k != 0
            else:
                m_take = m_t
        else:
            m_take = o_t == i_sel
        # [BLOCK_T, BLOCK_D]; rows not pooled get explicit zeros: every element of grad_hidden is written once
        b_zero = tl.zeros((BLOCK_T, BLOCK_D), dtype=grad_hidden.dtype.element_ty)
        b_dh = tl.where(m_take[:, None], b_g[None, :], b_zero)
        p_dh = p_d0 + o_t[:, None] * stride_ds + o_d[None, :]
        tl.store(p_dh, b_dh, mask=m_t[:, None] & m_d[None, :])


@triton.jit
def _l2norm_fwd_kernel(x, y, norm, dim, stride_xb, stride_yb, EPS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row ``i_b`` of ``x`` (float32): ``y = x / max(||x||, EPS)`` and ``norm = ||x||``."""
    i_b = tl.program_id(0).to(tl.int64)
    p_x0 = x + i_b * stride_xb
    b_ss = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        b_x = tl.load(p_x0 + o_d, mask=o_d < dim, other=0.0)
        b_ss += b_x * b_x
    b_norm = tl.sqrt(tl.sum(b_ss, axis=0))
    tl.store(norm + i_b, b_norm)
    b_denom = tl.maximum(b_norm, EPS)
    for d0 in range(0, dim, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m_d = o_d < dim
        b_x = tl.load(p_x0 + o_d, mask=m_d, other=0.0)
        tl.store(y + i_b * stride_yb + o_d, (b_x / b_denom).to(y.dtype.element_ty), mask=m_d)


@triton.jit
def _l2norm_bwd_kernel(dy, x, norm, dx, dim, stride_dyb, stride_xb, stride_dxb,
                       EPS: tl.constexpr, BLOCK_D: tl.constexpr):
    """``dx`` (float32) of row ``i_b`` for ``y = x / max(||x||, EPS)``: ``dy / n - x (x . dy) / n^3`` when
    ``||x|| >= EPS``, else ``dy / EPS``."""
    i_b = tl.program_id(0).to(tl.int64)
    p_dy0 = dy + i_b * stride_dyb
    p_x0 = x + i_b * stride_xb
    b_norm = tl.load(norm + i_b)
    b_denom = tl.maximum(b_norm, EPS)
    b_dot = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m_d = o_d < dim
        b_dy = tl.load(p_dy0 + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_x = tl.load(p_x0 + o_d, mask=m_d, other=0.0)
        b_dot += b_dy * b_x
    b_coef = tl.where(b_norm >= EPS, tl.sum(b_dot, axis=0) / (b_denom * b_denom * b_denom), 0.0)
    for d0 in range(0, dim, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m_d = o_d < dim
        b_dy = tl.load(p_dy0 + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_x = tl.load(p_x0 + o_d, mask=m_d, other=0.0)
        tl.store(dx + i_b * stride_dxb + o_d, b_dy / b_denom - b_x * b_coef, mask=m_d)


# ------------------------------------------------------------------------------------------------------------
# launchers: arguments by name (the offline compile report builds the same ones), then the launch
# ------------------------------------------------------------------------------------------------------------

# the candidates depend on neither dtype nor capability (bellm_kernels.configs)
_TUNE_KEY = ["dim", "MODE", "PACKED", "HAS_KEEP"]
_pool_fwd_tuned = triton.autotune(
    configs=configs.autotune_configs("pool_fwd", 0, torch.float32, (9, 0)), key=_TUNE_KEY
)(_pool_fwd_kernel)
_pool_bwd_tuned = triton.autotune(
    configs=configs.autotune_configs("pool_bwd", 0, torch.float32, (9, 0)), key=_TUNE_KEY
)(_pool_bwd_kernel)
_KERNELS = {"fwd": _pool_fwd_kernel, "bwd": _pool_bwd_kernel}
_TUNED = {"fwd": _pool_fwd_tuned, "bwd": _pool_bwd_tuned}


def _layout_args(x: torch.Tensor, keep, cu_seqlens, count, prefix: str) -> dict:
    """The layout arguments shared by both pooling kernels for hidden-shaped ``x``: the batch / position strides
    of ``x``, the token mask's row stride, ``seqlen`` (0 when packed), ``cu_seqlens`` (``count`` stands in, never
    read, in the padded layout) and the layout flags."""
    packed = cu_seqlens is not None
    if packed:
        stride_b, stride_s, seqlen = 0, x.stride(0), 0
    else:
        stride_b, stride_s, seqlen = x.stride(0), x.stride(1), x.shape[1]
    return {
        f"stride_{prefix}b": stride_b, f"stride_{prefix}s": stride_s, "stride_kb": seqlen, "seqlen": seqlen,
        "dim": x.shape[-1], "cu_seqlens": cu_seqlens if packed else count, "PACKED": packed,
        "HAS_KEEP": keep is not None,
    }


def _fwd_args(hidden, keep, cu_seqlens, out, count, sel, mode_id: int) -> dict:
    """Every argument of ``_pool_fwd_kernel`` but the tiles. ``keep``: the uint8 token mask (``(batch, seqlen)``
    or ``(total_tokens,)``) or None; ``out``: ``(num_seqs, dim)``; ``count`` int32 and ``sel`` int64
    ``(num_seqs,)``. The kernel never dereferences ``keep`` or ``cu_seqlens`` when its flags say they are
    absent (``hidden`` and ``count`` stand in)."""
    return dict(
        hidden=hidden, keep=keep if keep is not None else hidden, out=out, count=count, sel=sel,
        stride_ob=out.stride(0), MODE=mode_id, **_layout_args(hidden, keep, cu_seqlens, count, "h"),
    )


def _bwd_args(grad_pooled, keep, cu_seqlens, count, sel, grad_hidden, mode_id: int) -> dict:
    """Every argument of ``_pool_bwd_kernel`` but the tiles; ``grad_pooled (num_seqs, dim)``, ``grad_hidden``
    shaped like hidden, the rest as :func:`_fwd_args`."""
    return dict(
        grad_pooled=grad_pooled, keep=keep if keep is not None else grad_pooled, count=count, sel=sel,
        grad_hidden=grad_hidden, stride_gb=grad_pooled.stride(0), MODE=mode_id,
        **_layout_args(grad_hidden, keep, cu_seqlens, count, "d"),
    )


def _l2norm_fwd_args(pooled, out, norm) -> dict:
    """Arguments of ``_l2norm_fwd_kernel`` but the tiles: float32 ``pooled`` rows to ``out``, norms to ``norm``."""
    return dict(x=pooled, y=out, norm=norm, dim=pooled.shape[1], stride_xb=pooled.stride(0),
                stride_yb=out.stride(0), EPS=_EPS)


def _l2norm_bwd_args(grad_out, pooled, norm, grad_pooled) -> dict:
    """Arguments of ``_l2norm_bwd_kernel`` but the tiles: the gradient ``grad_out`` of the normalised rows to
    the float32 gradient ``grad_pooled`` of the ``pooled`` rows."""
    return dict(dy=grad_out, x=pooled, norm=norm, dx=grad_pooled, dim=pooled.shape[1],
                stride_dyb=grad_out.stride(0), stride_xb=pooled.stride(0), stride_dxb=grad_pooled.stride(0), EPS=_EPS)


def _launch_pool(kind: str, num_seqs: int, args: dict, interpret: bool) -> None:
    """Launch the pooling ``"fwd"`` or ``"bwd"`` kernel on the grid ``(num_seqs, dim blocks)``: autotuned on
    CUDA, fixed blocks in the interpreter."""
    dim = args["dim"]
    if interpret:
        kernel, meta = _KERNELS[kind], dict(BLOCK_T=_INTERPRET_BLOCK_T, BLOCK_D=_INTERPRET_BLOCK_D)
        grid = (num_seqs, triton.cdiv(dim, _INTERPRET_BLOCK_D))
    else:
        kernel, meta = _TUNED[kind], {}
        grid = lambda m: (num_seqs, triton.cdiv(dim, m["BLOCK_D"]))  # noqa: E731
    kernel[grid](**args, **meta)


def _launch_l2norm(kernel, num_seqs: int, args: dict, interpret: bool) -> None:
    """Launch an L2-norm kernel, one program per row."""
    if interpret:
        meta = dict(BLOCK_D=_INTERPRET_BLOCK_D, num_warps=4)
    else:
        (tile,) = configs.autotune_configs("pool_l2norm_fwd", args["dim"], torch.float32, (9, 0))
        meta = dict(tile.kwargs, num_warps=tile.num_warps, num_stages=tile.num_stages)
    kernel[(num_seqs,)](**args, **meta)


def _triton_pool_fwd(hidden, keep, cu_seqlens, mode_id: int, normalize: bool) -> tuple[torch.Tensor, tuple]:
    """Launch the pooling forward: ``(out (num_seqs, dim), state)``; ``state`` is what :func:`_triton_pool_bwd`
    needs (the per-sequence pooled-token count and selected row, the float32 pooled rows and their norms)."""
    interpret = hidden.device.type == "cpu"
    num_seqs = cu_seqlens.numel() - 1 if cu_seqlens is not None else hidden.shape[0]
    dim, dev = hidden.shape[-1], hidden.device
    out = _alloc((num_seqs, dim), hidden.dtype, dev)
    pooled = _alloc((num_seqs, dim), torch.float32, dev) if normalize else out
    count = _alloc((num_seqs,), torch.int32, dev)
    sel = _alloc((num_seqs,), torch.int64, dev)
    norm = _alloc((num_seqs,), torch.float32, dev) if normalize else None
    if out.numel() > 0:  # else nothing to compute (no sequence or dim 0); backward checks the same
        _launch_pool("fwd", num_seqs, _fwd_args(hidden, keep, cu_seqlens, pooled, count, sel, mode_id), interpret)
        if normalize:
            _launch_l2norm(_l2norm_fwd_kernel, num_seqs, _l2norm_fwd_args(pooled, out, norm), interpret)
    meta = (tuple(hidden.shape), hidden.dtype, mode_id, interpret)
    return out, (keep, cu_seqlens, count, sel, pooled if normalize else None, norm, meta)


def _triton_pool_bwd(grad_out, state) -> torch.Tensor:
    """Launch the pooling backward: ``grad_hidden`` shaped like ``hidden``."""
    keep, cu_seqlens, count, sel, pooled, norm, (shape, dtype, mode_id, interpret) = state
    grad_hidden = _alloc(shape, dtype, grad_out.device)
    num_seqs, dim = grad_out.shape
    if grad_hidden.numel() == 0:  # no token or dim 0 (num_seqs == 0 implies no token)
        return grad_hidden
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    grad_pooled = grad_out
    if pooled is not None:
        grad_pooled = _alloc((num_seqs, dim), torch.float32, grad_out.device)
        _launch_l2norm(_l2norm_bwd_kernel, num_seqs, _l2norm_bwd_args(grad_out, pooled, norm, grad_pooled),
                       interpret)
    args = _bwd_args(grad_pooled, keep, cu_seqlens, count, sel, grad_hidden, mode_id)
    _launch_pool("bwd", num_seqs, args, interpret)
    return grad_hidden


# ------------------------------------------------------------------------------------------------------------
# the custom ops bellm::pool and bellm::pool_bwd (CUDA -> Triton; CPU -> bellm_kernels.cpu, or the Triton
# kernels in the interpreter when TRITON_INTERPRET=1). The backward re-runs the forward launch (one cheap pass)
# for the per-sequence state instead of returning it from the forward op. Outputs are contiguous.
# ------------------------------------------------------------------------------------------------------------


def _keep(hidden, attention_mask, pool_mask):
    """The pooled-token mask as the kernels read it (uint8, or None for every token of a packed batch)."""
    if attention_mask is not None:
        keep = attention_mask if pool_mask is None else attention_mask & pool_mask
    else:
        keep = pool_mask
    return keep.contiguous().view(torch.uint8) if keep is not None else None


def _triton_pool(hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask):
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    keep = _keep(hidden, attention_mask, pool_mask)
    return hidden, _triton_pool_fwd(hidden, keep, cu_seqlens, _MODE_IDS[mode], normalize)


@torch.library.custom_op("bellm::pool", mutates_args=(), device_types="cpu")
def _pool_op(
    hidden: torch.Tensor, mode: str, normalize: bool, attention_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None, pool_mask: torch.Tensor | None,
) -> torch.Tensor:
    """``(num_seqs, dim)`` pooled vectors in ``hidden.dtype``."""
    if cu_seqlens is not None:
        _checks.check_cu_seqlens_values(cu_seqlens, hidden.shape[0])
    if _checks.use_triton(hidden):
        return _triton_pool(hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask)[1][0]
    out = cpu.pool(hidden, mode=mode, attention_mask=attention_mask, cu_seqlens=cu_seqlens,
                   normalize=normalize, pool_mask=pool_mask)
    return out.contiguous()


@_pool_op.register_kernel("cuda")
def _(hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask):
    if cu_seqlens is not None:
        _checks.check_cu_seqlens_values(cu_seqlens, hidden.shape[0])
    return _triton_pool(hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask)[1][0]


def _num_seqs(hidden, attention_mask, cu_seqlens) -> int:
    return cu_seqlens.shape[0] - 1 if cu_seqlens is not None else hidden.shape[0]


@_pool_op.register_fake
def _(hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask):
    return hidden.new_empty((_num_seqs(hidden, attention_mask, cu_seqlens), hidden.shape[-1]))


@torch.library.custom_op("bellm::pool_bwd", mutates_args=(), device_types="cpu")
def _pool_bwd_op(
    grad_out: torch.Tensor, hidden: torch.Tensor, mode: str, normalize: bool,
    attention_mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None, pool_mask: torch.Tensor | None,
) -> torch.Tensor:
    """``grad_hidden`` (contiguous, shaped like ``hidden``) for the upstream gradient ``grad_out``."""
    if _checks.use_triton(hidden):
        return _triton_pool_grad(grad_out, hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask)
    forward = lambda h: cpu.pool(h, mode=mode, attention_mask=attention_mask, cu_seqlens=cu_seqlens,  # noqa: E731
                                 normalize=normalize, pool_mask=pool_mask)
    _, vjp = torch.func.vjp(forward, hidden)
    return vjp(grad_out)[0].contiguous()


def _triton_pool_grad(grad_out, hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask):
    hidden, (_, state) = _triton_pool(hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask)
    return _triton_pool_bwd(grad_out, state)


@_pool_bwd_op.register_kernel("cuda")
def _(grad_out, hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask):
    return _triton_pool_grad(grad_out, hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask)


@_pool_bwd_op.register_fake
def _(grad_out, hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask):
    return hidden.new_empty(hidden.shape)


def _pool_setup_context(ctx, inputs, output):
    hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask = inputs
    ctx.save_for_backward(hidden, attention_mask, cu_seqlens, pool_mask)
    ctx.mode, ctx.normalize = mode, normalize


def _pool_backward(ctx, grad_out):
    hidden, attention_mask, cu_seqlens, pool_mask = ctx.saved_tensors
    grad = _pool_bwd_op(grad_out, hidden, ctx.mode, ctx.normalize, attention_mask, cu_seqlens, pool_mask)
    return grad, None, None, None, None, None


_pool_op.register_autograd(_pool_backward, setup_context=_pool_setup_context)


def _check_inputs(hidden, mode, attention_mask, cu_seqlens, normalize, pool_mask):
    """Validate everything before any launch; return ``(attention_mask_bool, pool_mask_bool)``."""
    if not isinstance(mode, str) or mode not in POOL_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; valid modes are {', '.join(map(repr, POOL_MODES))}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    _checks.check_dtype("hidden", hidden)
    if (attention_mask is None) == (cu_seqlens is None):
        which = "both" if attention_mask is not None else "neither"
        raise ValueError(
            f"got {which} of attention_mask and cu_seqlens; pass exactly one: attention_mask (batch, seqlen) "
            "with padded hidden (batch, seqlen, dim), or int32 cu_seqlens (num_seqs + 1,) with packed hidden "
            "(total_tokens, dim)"
        )
    for name, t in (("attention_mask", attention_mask), ("cu_seqlens", cu_seqlens), ("pool_mask", pool_mask)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _checks.check_same_device(hidden=hidden, attention_mask=attention_mask, cu_seqlens=cu_seqlens,
                              pool_mask=pool_mask)
    if attention_mask is not None:
        if hidden.dim() != 3:
            raise ValueError(
                f"hidden has shape {tuple(hidden.shape)}; with attention_mask the padded layout "
                "(batch, seqlen, dim) is expected (for packed (total_tokens, dim) pass cu_seqlens instead)"
            )
        batch, seqlen, _ = hidden.shape
        attention_mask = _checks.check_mask("attention_mask", attention_mask, batch, seqlen)
        if pool_mask is not None:
            pool_mask = _checks.check_mask("pool_mask", pool_mask, batch, seqlen)
        return attention_mask, pool_mask
    if hidden.dim() != 2:
        raise ValueError(
            f"hidden has shape {tuple(hidden.shape)}; with cu_seqlens the packed layout (total_tokens, dim) "
            "is expected (for padded (batch, seqlen, dim) pass attention_mask instead)"
        )
    _checks.check_cu_seqlens_meta(cu_seqlens)  # the values are checked inside the op
    if pool_mask is not None:
        if pool_mask.dim() != 1 or pool_mask.shape[0] != hidden.shape[0]:
            raise ValueError(
                f"pool_mask has shape {tuple(pool_mask.shape)}; with cu_seqlens it must be (total_tokens,) = "
                f"({hidden.shape[0]},), 1 for tokens to pool"
            )
        if pool_mask.is_floating_point() or pool_mask.is_complex():
            raise TypeError(f"pool_mask has dtype {pool_mask.dtype}; pass a bool or 0/1 integer mask")
        pool_mask = pool_mask != 0 if pool_mask.dtype != torch.bool else pool_mask
    return None, pool_mask


def pool(
    hidden: torch.Tensor,
    *,
    mode: str,
    attention_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    normalize: bool = False,
    pool_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool hidden states into one vector per sequence, ``(num_seqs, dim)`` in ``hidden.dtype``.

    Args:
        hidden (torch.Tensor):
            padded ``(batch, seqlen, dim)`` or packed ``(total_tokens, dim)``; float16, bfloat16 or float32.
            The last dim must be contiguous or it is copied.
        mode (str):
            ``"mean"`` (average of the pooled tokens), ``"last"`` / ``"first"`` (the last / first pooled
            token, whatever the padding side).
        attention_mask (torch.Tensor):
            padded layout only: bool or 0/1 integer ``(batch, seqlen)``, 1 = real token (left, right or mixed
            padding). Default: ``None``.
        cu_seqlens (torch.Tensor):
            packed layout only: int32 ``(num_seqs + 1,)``, ``[0, ..., total_tokens]``, non-decreasing
            (zero-length sequences allowed). Default: ``None``.
        normalize (bool):
            divide each pooled vector by ``max(||x||_2, 1e-12)``. Default: ``False``.
        pool_mask (torch.Tensor):
            same token layout as the mask (``(batch, seqlen)`` padded, ``(total_tokens,)`` packed),
            1 = include; excludes e.g. instruction tokens from pooling. Default: ``None`` (all real tokens).

    A sequence with no pooled token gives a zero vector and zero gradients. Pass exactly one of
    ``attention_mask`` and ``cu_seqlens``. Raises ``ValueError`` for an unknown mode, both/neither mask, wrong
    shapes, bad ``cu_seqlens`` or mixed devices, ``TypeError`` for an unsupported dtype or mask dtype, all
    before any kernel launch. Runs as the custom op ``torch.ops.bellm.pool`` (``torch.compile`` traces it
    without a graph break), differentiable w.r.t. ``hidden``: CUDA tensors run the Triton kernels, CPU tensors
    :func:`bellm_kernels.cpu.pool`, or the Triton kernels in Triton's interpreter when ``TRITON_INTERPRET=1``.
    """
    attention_mask, pool_mask = _check_inputs(hidden, mode, attention_mask, cu_seqlens, normalize, pool_mask)
    return _pool_op(hidden, mode, normalize, attention_mask, cu_seqlens, pool_mask)
