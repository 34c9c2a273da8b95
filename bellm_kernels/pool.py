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

def _alloc(shape, dtype, device) -> torch.Tensor:
    """Uninitialised kernel output buffer (the tests swap in a NaN-filled one to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


# fixed blocks for the interpreter: big enough to keep it quick, small enough that the tests cross block edges
_INTERPRET_BLOCK_T = 16
_INTERPRET_BLOCK_D = 256


# padded lengths vary per batch: never a new specialisation for them
@triton.jit(do_not_specialize=["seqlen", "keep_stride_b"])
def _pool_fwd_kernel(
    h_ptr, keep_ptr, cu_ptr, out_ptr, count_ptr, sel_ptr,
    seqlen, D,
    stride_hb, stride_ht, stride_ob, keep_stride_b,
    MODE: tl.constexpr, PACKED: tl.constexpr, HAS_KEEP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1)
    if PACKED:
        start = tl.load(cu_ptr + i_b).to(tl.int64)
        end = tl.load(cu_ptr + i_b + 1).to(tl.int64)
    else:
        start = tl.zeros((), dtype=tl.int64)
        end = tl.zeros((), dtype=tl.int64) + seqlen
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D
    if MODE == 0:
        # [BT, BD]
        b_acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        # [BT]
        b_cnt = tl.zeros((BLOCK_T,), dtype=tl.int32)
        for t0 in range(start, end, BLOCK_T):
            o_t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
            m_t = o_t < end
            if HAS_KEEP:
                b_k = tl.load(keep_ptr + i_b * keep_stride_b + o_t, mask=m_t, other=0)
                m_t = m_t & (b_k != 0)
            p_h = h_ptr + i_b * stride_hb + o_t[:, None] * stride_ht + o_d[None, :]
            b_acc += tl.load(p_h, mask=m_t[:, None] & m_d[None, :], other=0.0).to(tl.float32)
            b_cnt += m_t.to(tl.int32)
        count = tl.sum(b_cnt, axis=0)
        # [BD]
        b_out = tl.sum(b_acc, axis=0) / tl.maximum(count, 1).to(tl.float32)
        sel = tl.full((), -1, dtype=tl.int64)
    else:
        if HAS_KEEP:
            if MODE == 1:
                b_best = tl.full((BLOCK_T,), -1, dtype=tl.int64)
            else:
                b_best = tl.full((BLOCK_T,), 2147483647, dtype=tl.int64)
            for t0 in range(start, end, BLOCK_T):
                o_t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
                m_t = o_t < end
                b_k = tl.load(keep_ptr + i_b * keep_stride_b + o_t, mask=m_t, other=0)
                m_t = m_t & (b_k != 0)
                if MODE == 1:
                    b_best = tl.maximum(b_best, tl.where(m_t, o_t, -1))
                else:
                    b_best = tl.minimum(b_best, tl.where(m_t, o_t, 2147483647))
            if MODE == 1:
                sel = tl.max(b_best, axis=0)
            else:
                sel = tl.min(b_best, axis=0)
                sel = tl.where(sel == 2147483647, -1, sel)
        else:
            if MODE == 1:
                sel = tl.where(end > start, end - 1, -1)
            else:
                sel = tl.where(end > start, start, -1)
        valid = sel >= 0
        count = valid.to(tl.int32)
        p_h = h_ptr + i_b * stride_hb + tl.maximum(sel, 0) * stride_ht + o_d
        m_sel = m_d & ((tl.zeros((BLOCK_D,), dtype=tl.int64) + sel) >= 0)
        b_out = tl.load(p_h, mask=m_sel, other=0.0).to(tl.float32)
    tl.store(out_ptr + i_b * stride_ob + o_d, b_out.to(out_ptr.dtype.element_ty), mask=m_d)
    if i_d == 0:
        tl.store(count_ptr + i_b, count)
        tl.store(sel_ptr + i_b, sel)


@triton.jit(do_not_specialize=["seqlen", "keep_stride_b"])
def _pool_bwd_kernel(
    g_ptr, keep_ptr, cu_ptr, count_ptr, sel_ptr, dh_ptr,
    seqlen, D,
    stride_gb, stride_db, stride_dt, keep_stride_b,
    MODE: tl.constexpr, PACKED: tl.constexpr, HAS_KEEP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1)
    if PACKED:
        start = tl.load(cu_ptr + i_b).to(tl.int64)
        end = tl.load(cu_ptr + i_b + 1).to(tl.int64)
    else:
        start = tl.zeros((), dtype=tl.int64)
        end = tl.zeros((), dtype=tl.int64) + seqlen
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D
    # [BD]
    b_g = tl.load(g_ptr + i_b * stride_gb + o_d, mask=m_d, other=0.0).to(tl.float32)
    # an empty sequence (count 0 / sel -1) selects no row; zero its (eps-divided) pooled grad anyway
    if MODE == 0:
        count = tl.load(count_ptr + i_b)
        b_g = tl.where(count > 0, b_g / tl.maximum(count, 1).to(tl.float32), 0.0)
    else:
        sel = tl.load(sel_ptr + i_b)
        b_g = tl.where(sel >= 0, b_g, 0.0)
    b_g = b_g.to(dh_ptr.dtype.element_ty)
    for t0 in range(start, end, BLOCK_T):
        o_t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        m_t = o_t < end
        if MODE == 0:
            if HAS_KEEP:
                b_k = tl.load(keep_ptr + i_b * keep_stride_b + o_t, mask=m_t, other=0)
                take = b_k != 0
            else:
                take = m_t
        else:
            take = o_t == sel
        # [BT, BD]; non-pooled rows get explicit zeros: every element of grad_hidden is written once
        b_zero = tl.zeros((BLOCK_T, BLOCK_D), dtype=dh_ptr.dtype.element_ty)
        b_dh = tl.where(take[:, None], b_g[None, :], b_zero)
        p_dh = dh_ptr + i_b * stride_db + o_t[:, None] * stride_dt + o_d[None, :]
        tl.store(p_dh, b_dh, mask=m_t[:, None] & m_d[None, :])


@triton.jit
def _l2norm_fwd_kernel(x_ptr, y_ptr, norm_ptr, D, stride_xb, stride_yb,
                       EPS: tl.constexpr, BLOCK_D: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    b_ss = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        b_x = tl.load(x_ptr + i_b * stride_xb + o_d, mask=o_d < D, other=0.0)
        b_ss += b_x * b_x
    norm = tl.sqrt(tl.sum(b_ss, axis=0))
    tl.store(norm_ptr + i_b, norm)
    denom = tl.maximum(norm, EPS)
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        b_x = tl.load(x_ptr + i_b * stride_xb + o_d, mask=o_d < D, other=0.0)
        tl.store(y_ptr + i_b * stride_yb + o_d, (b_x / denom).to(y_ptr.dtype.element_ty), mask=o_d < D)


@triton.jit
def _l2norm_bwd_kernel(dy_ptr, x_ptr, norm_ptr, dx_ptr, D, stride_dyb, stride_xb, stride_dxb,
                       EPS: tl.constexpr, BLOCK_D: tl.constexpr):
    # y = x / max(||x||, eps):  dx = dy / n - x (x . dy) / n^3 when ||x|| >= eps, else dy / eps
    i_b = tl.program_id(0).to(tl.int64)
    norm = tl.load(norm_ptr + i_b)
    denom = tl.maximum(norm, EPS)
    b_dot = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        b_dy = tl.load(dy_ptr + i_b * stride_dyb + o_d, mask=o_d < D, other=0.0).to(tl.float32)
        b_x = tl.load(x_ptr + i_b * stride_xb + o_d, mask=o_d < D, other=0.0)
        b_dot += b_dy * b_x
    coef = tl.where(norm >= EPS, tl.sum(b_dot, axis=0) / (denom * denom * denom), 0.0)
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        b_dy = tl.load(dy_ptr + i_b * stride_dyb + o_d, mask=o_d < D, other=0.0).to(tl.float32)
        b_x = tl.load(x_ptr + i_b * stride_xb + o_d, mask=o_d < D, other=0.0)
        tl.store(dx_ptr + i_b * stride_dxb + o_d, b_dy / denom - b_x * coef, mask=o_d < D)


# the candidates depend on neither dtype nor capability (bellm_kernels.configs)
_TUNE_KEY = ["D", "MODE", "PACKED", "HAS_KEEP"]
_pool_fwd_tuned = triton.autotune(
    configs=configs.autotune_configs("pool_fwd", 0, torch.float32, (9, 0)), key=_TUNE_KEY
)(_pool_fwd_kernel)
_pool_bwd_tuned = triton.autotune(
    configs=configs.autotune_configs("pool_bwd", 0, torch.float32, (9, 0)), key=_TUNE_KEY
)(_pool_bwd_kernel)


def _launch_pool(kernel, tuned, grid_seqs: int, D: int, args: tuple, flags: dict, interpret: bool) -> None:
    if interpret:
        grid = (grid_seqs, triton.cdiv(D, _INTERPRET_BLOCK_D))
        kernel[grid](*args, **flags, BLOCK_T=_INTERPRET_BLOCK_T, BLOCK_D=_INTERPRET_BLOCK_D)
    else:
        tuned[lambda meta: (grid_seqs, triton.cdiv(D, meta["BLOCK_D"]))](*args, **flags)


def _norm_block(D: int, interpret: bool) -> tuple[int, int]:
    """(BLOCK_D, num_warps) of the L2-norm kernels for rows of ``D`` floats."""
    if interpret:
        return _INTERPRET_BLOCK_D, 4
    (tile,) = configs.autotune_configs("pool_l2norm_fwd", D, torch.float32, (9, 0))
    return tile.kwargs["BLOCK_D"], tile.num_warps


def _triton_pool_fwd(hidden, keep, cu_seqlens, mode_id: int, normalize: bool) -> tuple[torch.Tensor, tuple]:
    """Launch the pooling forward: ``(out (num_seqs, dim), state)``; ``state`` is what :func:`_triton_pool_bwd`
    needs (the per-sequence pooled-token count and selected row, the float32 pooled rows and their norms)."""
    packed = cu_seqlens is not None
    interpret = hidden.device.type == "cpu"
    if packed:
        num_seqs, seqlen, D = cu_seqlens.numel() - 1, 0, hidden.shape[1]
        h_strides, keep_stride_b = (0, hidden.stride(0)), 0
    else:
        num_seqs, seqlen, D = hidden.shape
        h_strides, keep_stride_b = (hidden.stride(0), hidden.stride(1)), seqlen
    dev = hidden.device
    out = _alloc((num_seqs, D), hidden.dtype, dev)
    pooled = _alloc((num_seqs, D), torch.float32, dev) if normalize else out
    count = _alloc((num_seqs,), torch.int32, dev)
    sel = _alloc((num_seqs,), torch.int64, dev)
    norm = _alloc((num_seqs,), torch.float32, dev) if normalize else None
    flags = {"MODE": mode_id, "PACKED": packed, "HAS_KEEP": keep is not None}
    if out.numel() > 0:  # else nothing to compute (no sequence or dim 0); backward checks the same
        # the kernel never dereferences keep / cu_seqlens when its flags say they are absent
        args = (hidden, keep if keep is not None else hidden, cu_seqlens if packed else count, pooled,
                count, sel, seqlen, D, *h_strides, pooled.stride(0), keep_stride_b)
        _launch_pool(_pool_fwd_kernel, _pool_fwd_tuned, num_seqs, D, args, flags, interpret)
        if normalize:
            block, warps = _norm_block(D, interpret)
            _l2norm_fwd_kernel[(num_seqs,)](pooled, out, norm, D, pooled.stride(0), out.stride(0),
                                            EPS=_EPS, BLOCK_D=block, num_warps=warps)
    meta = (tuple(hidden.shape), hidden.dtype, seqlen, keep_stride_b, flags, interpret)
    return out, (keep, cu_seqlens, count, sel, pooled if normalize else None, norm, meta)


def _triton_pool_bwd(grad_out, state) -> torch.Tensor:
    """Launch the pooling backward: ``grad_hidden`` shaped like ``hidden``."""
    keep, cu_seqlens, count, sel, pooled, norm, meta = state
    shape, dtype, seqlen, keep_stride_b, flags, interpret = meta
    grad_hidden = _alloc(shape, dtype, grad_out.device)
    num_seqs, D = grad_out.shape
    if grad_hidden.numel() == 0:  # no token or dim 0 (num_seqs == 0 implies no token)
        return grad_hidden
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    g = grad_out
    if pooled is not None:
        g = _alloc((num_seqs, D), torch.float32, grad_out.device)
        block, warps = _norm_block(D, interpret)
        _l2norm_bwd_kernel[(num_seqs,)](grad_out, pooled, norm, g, D, grad_out.stride(0),
                                        pooled.stride(0), g.stride(0), EPS=_EPS, BLOCK_D=block,
                                        num_warps=warps)
    if flags["PACKED"]:
        dh_strides = (0, grad_hidden.stride(0))
    else:
        dh_strides = (grad_hidden.stride(0), grad_hidden.stride(1))
    args = (g, keep if keep is not None else g, cu_seqlens if flags["PACKED"] else count, count, sel,
            grad_hidden, seqlen, D, g.stride(0), *dh_strides, keep_stride_b)
    _launch_pool(_pool_bwd_kernel, _pool_bwd_tuned, num_seqs, D, args, flags, interpret)
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
