"""Fused softmax attention in Triton: causal or bidirectional per call, padded or packed varlen, GQA, fwd + bwd.

Layers, in order: the ``@triton.jit`` kernels (``_attn_fwd_kernel``, ``_attn_bwd_preprocess_kernel``,
``_attn_bwd_dkdv_kernel``, ``_attn_bwd_dq_kernel``) → the launchers ``_attn_fwd`` / ``_attn_bwd`` (choose
blocks, allocate, launch; no autograd) → the custom ops ``bellm::attention_fwd`` / ``bellm::attention_bwd``
(device dispatch, autograd, fake tensors for ``torch.compile``) → the public :func:`attention` (docstring,
checks).

Algorithm (FlashAttention-2): the forward streams key/value blocks through an online base-2 softmax and saves
the log-sum-exp ``lse`` (base 2, one float32 per query row and head); the backward recomputes the
probabilities from ``lse``: a preprocess kernel computes ``delta = rowsum(dO * O)``, one program per (key
block, kv head) accumulates dK and dV over every query head of its GQA group in float32 (no atomics), and one
program per (query block, head) accumulates dQ.

Every program works inside one *window*: a packed sequence ``[cu_seqlens[b], cu_seqlens[b+1])`` or one padded
row ``b``. A padded row's real tokens lie in ``[lo, hi)`` (first and last real token, computed on the device,
no host sync); a general 0/1 mask (holes too) is applied on top. Key blocks outside the visible range are
never visited (causal upper triangle, beyond the sequence end, padding), and only blocks on a boundary pay for
masking. Programs past a packed sequence's end exit at once; padded rows with no real token write zeros.

Query rows that see no key (padding) get a zero output and ``lse = +inf``, so the backward's recomputed
probabilities are exactly 0 there: zeros and zero gradients, never NaN.

Register budget: the shipped tile configurations compile without register spills on sm80 and sm90 (checked
offline by :mod:`bellm_kernels.compile_report`, KERNELS.md). What keeps them there: nothing tile-shaped lives
across the key/query loops but the accumulators and the resident operands. Output pointers and masks are built
after the loops (``_store_tile``), never before them: a [rows, BLOCK_D] int64 pointer tile kept alive across the
loops costs about as many registers as the accumulator, and made every head_dim-128 candidate spill under Triton
3.6. The packed and the dense padded layout share one binary (the packed layout is told apart at run time by
``seqlen == 0``); causality, head counts and head_dim are run-time values too (causal and bidirectional layers
share one binary, so do head_dims 80 and 96), and only the dtypes, the key-mask flag, whether head_dim is a power
of two (``EVEN_D``) and the tiles are compile-time.

Names inside the kernels: ``i_`` program indices, ``o_`` offset vectors, ``m_`` boolean masks, ``p_`` pointer
tiles, ``b_`` value tiles held in registers.

Autotuning (CUDA only) keys on head_dim, head counts, causal and the dtypes; sequence lengths are runtime ints
(``do_not_specialize``), so new packed lengths neither retune nor recompile. The candidates come from
:func:`bellm_kernels.configs.autotune_configs`. In Triton's interpreter (CPU tensors with ``TRITON_INTERPRET=1``)
one small fixed config runs instead.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bellm_kernels import _checks, configs, cpu

__all__ = ["attention", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634

# run-time ints that must not create new specialisations (Triton specialises ints equal to 1 or divisible by 16)
_RUNTIME_INTS = ["seqlen", "lse_rows", "num_heads", "num_kv_heads", "stride_mb", "head_dim"]


# ------------------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------------------


@triton.jit
def _window(cu_seqlens, bounds, i_b, seqlen, HAS_MASK: tl.constexpr):
    """(tok0, win_len, row0, lo, hi) of window ``i_b``.

    Packed layout (``seqlen == 0``): sequence ``i_b`` of ``cu_seqlens``, starting at token ``tok0``; padded:
    row ``i_b`` of ``seqlen`` positions, ``tok0 = 0``. ``row0`` (int64) is the window's first row in the
    ``(rows,)`` numbering of ``lse`` / ``delta``; ``[lo, hi)`` are the positions that may hold real tokens (the
    bounds of a padded row under a key mask, else the whole window)."""
    if seqlen == 0:
        tok0 = tl.load(cu_seqlens + i_b)
        win_len = tl.load(cu_seqlens + i_b + 1) - tok0
    else:
        tok0 = seqlen * 0
        win_len = seqlen
    row0 = i_b.to(tl.int64) * seqlen + tok0
    if HAS_MASK:
        lo = tl.load(bounds + 2 * i_b)
        hi = tl.load(bounds + 2 * i_b + 1)
    else:
        lo = win_len * 0
        hi = win_len
    return tok0, win_len, row0, lo, hi


@triton.jit
def _base(ptr, i_b, tok0, i_h, stride_b, stride_s, stride_h):
    """Pointer to position 0 of window ``i_b``, head ``i_h`` (packed: ``stride_b == 0``); int64 arithmetic."""
    return ptr + i_b.to(tl.int64) * stride_b + tok0.to(tl.int64) * stride_s + i_h.to(tl.int64) * stride_h


@triton.jit
def _store_tile(ptr, i_b, tok0, i_h, stride_b, stride_s, stride_h, b_x, start, win_len, head_dim,
                BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Store the [BLOCK_R, BLOCK_D] tile ``b_x`` at rows ``[start, start + BLOCK_R)`` of window ``i_b``, head
    ``i_h``; rows past ``win_len`` and columns past ``head_dim`` are left alone. It builds its own pointers:
    called after the main loops, it keeps every pointer tile out of the values live across them (which made
    the kernels spill)."""
    o_r = start + tl.arange(0, BLOCK_R)
    o_d = tl.arange(0, BLOCK_D)
    p_x = _base(ptr, i_b, tok0, i_h, stride_b, stride_s, stride_h) + o_r[:, None] * stride_s + o_d[None, :]
    tl.store(p_x, b_x.to(ptr.dtype.element_ty), mask=(o_r < win_len)[:, None] & (o_d < head_dim)[None, :])


@triton.jit
def _key_range(start_m, lo, hi, causal, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks seen by query rows ``[start_m, start_m + BLOCK_M)``: they start at ``lo``; ``[lo, mid)``
    need no mask, ``[mid, end)`` hold the causal diagonal or the sequence end."""
    end = hi
    full_end = hi
    if causal:
        end = tl.minimum(hi, start_m + BLOCK_M)
        full_end = tl.minimum(start_m + 1, hi)
    return lo + tl.maximum(full_end - lo, 0) // BLOCK_N * BLOCK_N, end


@triton.jit
def _query_range(start_n, lo, hi, causal, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query blocks that see keys ``[start_n, start_n + BLOCK_N)``: ``[first, full)`` hold the causal diagonal
    (masked), ``[full, tail)`` need no mask, ``[tail, hi)`` hold the sequence end (masked)."""
    first = lo
    n_diag = lo * 0
    if causal:
        first = tl.maximum(lo, start_n)
        n_diag = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - first, 0), BLOCK_M)
    n_even = tl.maximum(hi - first, 0) // BLOCK_M
    n_diag = tl.minimum(n_diag, n_even)
    return first, first + n_diag * BLOCK_M, first + n_even * BLOCK_M


@triton.jit
def _diag_shift(causal):
    """0 when causal, else 2**30: key ``j`` is visible to query ``i`` iff ``j <= i + shift`` (one compare
    serves both)."""
    shift = tl.full((), 1 << 30, tl.int32)
    if causal:
        shift = tl.full((), 0, tl.int32)
    return shift


@triton.jit
def _load_tile(ptrs, m_rows, m_d, ROW_MASK: tl.constexpr, EVEN_D: tl.constexpr):
    """Load a [rows, BLOCK_D] (or transposed) tile; masks only what may be out of range."""
    if ROW_MASK:
        if EVEN_D:
            return tl.load(ptrs, mask=m_rows, other=0.0)
        else:
            return tl.load(ptrs, mask=m_rows & m_d, other=0.0)
    else:
        if EVEN_D:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=m_d, other=0.0)


@triton.jit
def _attn_fwd_inner(
    b_acc, b_l, b_mx, b_q, p_k0, p_v0, p_km0, stride_ks, stride_vs, stride_ms,
    o_m, o_d, m_d, n_start, n_end, hi, shift, qk_scale,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    o_nn = tl.arange(0, BLOCK_N)
    for start_n in range(n_start, n_end, BLOCK_N):
        o_n = start_n + o_nn
        m_n = o_n < hi
        # [BLOCK_D, BLOCK_N]
        b_kt = _load_tile(p_k0 + o_n[None, :] * stride_ks + o_d[:, None], m_n[None, :], m_d[:, None],
                          MASKED, EVEN_D)
        # [BLOCK_M, BLOCK_N]
        b_s = tl.dot(b_q, b_kt, input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            m_vis = m_n[None, :] & ((o_n - shift)[None, :] <= o_m[:, None])
            b_s = tl.where(m_vis, b_s, float("-inf"))
        if HAS_MASK:
            b_km = tl.load(p_km0 + o_n * stride_ms, mask=m_n, other=0)
            b_s = tl.where(b_km[None, :] != 0, b_s, float("-inf"))
        # b_mx starts finite, so alpha is never exp2(-inf - -inf)
        b_mx_new = tl.maximum(b_mx, tl.max(b_s, 1))
        b_alpha = tl.exp2(b_mx - b_mx_new)
        b_p = tl.exp2(b_s - b_mx_new[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        # [BLOCK_N, BLOCK_D]
        b_v = _load_tile(p_v0 + o_n[:, None] * stride_vs + o_d[None, :], m_n[:, None], m_d[None, :],
                         MASKED, EVEN_D)
        b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc * b_alpha[:, None], input_precision=DOT_PRECISION)
        b_mx = b_mx_new
    return b_acc, b_l, b_mx


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_fwd_kernel(
    q, k, v, o, lse, cu_seqlens, key_mask, bounds,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    stride_mb, stride_ms,
    seqlen, lse_rows, num_heads, num_kv_heads, head_dim, causal, qk_scale,
    HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_b = tl.program_id(1)
    i_h = tl.program_id(2)
    # causal: the longest rows first, for better tail balance
    if causal:
        i_m = tl.num_programs(0) - 1 - i_m
    i_hk = i_h // (num_heads // num_kv_heads)
    tok0, win_len, row0, lo, hi = _window(cu_seqlens, bounds, i_b, seqlen, HAS_MASK)
    start_m = i_m * BLOCK_M
    if start_m >= win_len:
        return

    if (start_m >= hi) | (start_m + BLOCK_M <= lo):
        # a block of padding: zeros, and lse = +inf so the backward sees probability 0
        _store_tile(o, i_b, tok0, i_h, stride_ob, stride_os, stride_oh, tl.zeros([BLOCK_M, BLOCK_D], tl.float32),
                    start_m, win_len, head_dim, BLOCK_M, BLOCK_D)
        o_m = start_m + tl.arange(0, BLOCK_M)
        tl.store(lse + i_h.to(tl.int64) * lse_rows + row0 + o_m, tl.full([BLOCK_M], float("inf"), tl.float32),
                 mask=o_m < win_len)
        return

    o_m = start_m + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < head_dim
    m_m = o_m < win_len
    p_q0 = _base(q, i_b, tok0, i_h, stride_qb, stride_qs, stride_qh)
    p_k0 = _base(k, i_b, tok0, i_hk, stride_kb, stride_ks, stride_kh)
    p_v0 = _base(v, i_b, tok0, i_hk, stride_vb, stride_vs, stride_vh)
    p_km0 = key_mask + i_b.to(tl.int64) * stride_mb
    # [BLOCK_M, BLOCK_D]
    b_q = _load_tile(p_q0 + o_m[:, None] * stride_qs + o_d[None, :], m_m[:, None], m_d[None, :], True, EVEN_D)
    b_mx = tl.full([BLOCK_M], -1.0e30, tl.float32)
    b_l = tl.zeros([BLOCK_M], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    mid, end = _key_range(start_m, lo, hi, causal, BLOCK_M, BLOCK_N)
    b_acc, b_l, b_mx = _attn_fwd_inner(
        b_acc, b_l, b_mx, b_q, p_k0, p_v0, p_km0, stride_ks, stride_vs, stride_ms,
        o_m, o_d, m_d, lo, mid, hi, _diag_shift(causal), qk_scale,
        MASKED=False, HAS_MASK=HAS_MASK, EVEN_D=EVEN_D, DOT_PRECISION=DOT_PRECISION,
        BLOCK_N=BLOCK_N,
    )
    b_acc, b_l, b_mx = _attn_fwd_inner(
        b_acc, b_l, b_mx, b_q, p_k0, p_v0, p_km0, stride_ks, stride_vs, stride_ms,
        o_m, o_d, m_d, mid, end, hi, _diag_shift(causal), qk_scale,
        MASKED=True, HAS_MASK=HAS_MASK, EVEN_D=EVEN_D, DOT_PRECISION=DOT_PRECISION,
        BLOCK_N=BLOCK_N,
    )

    o_m = start_m + tl.arange(0, BLOCK_M)
    m_m = o_m < win_len
    m_ok = (o_m >= lo) & (o_m < hi) & (b_l > 0)
    if HAS_MASK:
        b_qm = tl.load(p_km0 + o_m * stride_ms, mask=m_m, other=0)
        m_ok = m_ok & (b_qm != 0)
    b_l = tl.where(m_ok, b_l, 1.0)
    b_o = tl.where(m_ok[:, None], b_acc / b_l[:, None], 0.0)
    _store_tile(o, i_b, tok0, i_h, stride_ob, stride_os, stride_oh, b_o, start_m, win_len, head_dim,
                BLOCK_M, BLOCK_D)
    tl.store(lse + i_h.to(tl.int64) * lse_rows + row0 + o_m, tl.where(m_ok, b_mx + tl.log2(b_l), float("inf")),
             mask=m_m)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_preprocess_kernel(
    o, do, delta, cu_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_dob, stride_dos, stride_doh,
    seqlen, lse_rows, head_dim,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_b = tl.program_id(1)
    i_h = tl.program_id(2)
    # every row of the window, padding too (its dO is zero)
    tok0, win_len, row0, lo, hi = _window(cu_seqlens, cu_seqlens, i_b, seqlen, False)
    start_m = i_m * BLOCK_M
    if start_m >= win_len:
        return
    o_m = start_m + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_m = o_m < win_len
    m_md = m_m[:, None] & (o_d < head_dim)[None, :]
    p_o = _base(o, i_b, tok0, i_h, stride_ob, stride_os, stride_oh) + o_m[:, None] * stride_os + o_d[None, :]
    p_do = _base(do, i_b, tok0, i_h, stride_dob, stride_dos, stride_doh) + o_m[:, None] * stride_dos + o_d[None, :]
    b_o = tl.load(p_o, mask=m_md, other=0.0).to(tl.float32)
    b_do = tl.load(p_do, mask=m_md, other=0.0).to(tl.float32)
    tl.store(delta + i_h.to(tl.int64) * lse_rows + row0 + o_m, tl.sum(b_o * b_do, 1), mask=m_m)


@triton.jit
def _attn_bwd_dkdv_inner(
    b_dk, b_dv, b_k, b_v, p_q0, p_do0, p_lse0, p_delta0, stride_qs, stride_dos,
    o_n, o_d, m_d, m_start, m_end, hi, shift, qk_scale,
    MASKED: tl.constexpr, EVEN_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    o_mm = tl.arange(0, BLOCK_M)
    for start_m in range(m_start, m_end, BLOCK_M):
        o_m = start_m + o_mm
        m_m = o_m < hi
        # [BLOCK_M, BLOCK_D]
        b_q = _load_tile(p_q0 + o_m[:, None] * stride_qs + o_d[None, :], m_m[:, None], m_d[None, :],
                         MASKED, EVEN_D)
        b_do = _load_tile(p_do0 + o_m[:, None] * stride_dos + o_d[None, :], m_m[:, None], m_d[None, :],
                          MASKED, EVEN_D)
        if MASKED:
            b_lse = tl.load(p_lse0 + o_m, mask=m_m, other=float("inf"))
            b_delta = tl.load(p_delta0 + o_m, mask=m_m, other=0.0)
        else:
            b_lse = tl.load(p_lse0 + o_m)
            b_delta = tl.load(p_delta0 + o_m)
        # [BLOCK_N, BLOCK_M]; rows of padding have lse = +inf, hence probability 0
        b_st = tl.dot(b_k, tl.trans(b_q), input_precision=DOT_PRECISION) * qk_scale
        b_pt = tl.exp2(b_st - b_lse[None, :])
        if MASKED:
            m_vis = m_m[None, :] & ((o_m + shift)[None, :] >= o_n[:, None])
            b_pt = tl.where(m_vis, b_pt, 0.0)
        b_dv = tl.dot(b_pt.to(b_do.dtype), b_do, b_dv, input_precision=DOT_PRECISION)
        b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=DOT_PRECISION)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        b_dk = tl.dot(b_dst.to(b_q.dtype), b_q, b_dk, input_precision=DOT_PRECISION)
    return b_dk, b_dv


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dkdv_kernel(
    q, k, v, do, dk, dv, lse, delta, cu_seqlens, key_mask, bounds,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh,
    stride_mb, stride_ms,
    seqlen, lse_rows, num_heads, num_kv_heads, head_dim, causal, scale, qk_scale,
    HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_b = tl.program_id(1)
    i_hk = tl.program_id(2)
    group = num_heads // num_kv_heads
    tok0, win_len, row0, lo, hi = _window(cu_seqlens, bounds, i_b, seqlen, HAS_MASK)
    start_n = i_n * BLOCK_N
    if start_n >= win_len:
        return

    if (start_n >= hi) | (start_n + BLOCK_N <= lo):
        b_zero = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        _store_tile(dk, i_b, tok0, i_hk, stride_dkb, stride_dks, stride_dkh, b_zero, start_n, win_len, head_dim,
                    BLOCK_N, BLOCK_D)
        _store_tile(dv, i_b, tok0, i_hk, stride_dvb, stride_dvs, stride_dvh, b_zero, start_n, win_len, head_dim,
                    BLOCK_N, BLOCK_D)
        return

    o_n = start_n + tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < head_dim
    m_n = o_n < win_len
    p_k = _base(k, i_b, tok0, i_hk, stride_kb, stride_ks, stride_kh) + o_n[:, None] * stride_ks + o_d[None, :]
    p_v = _base(v, i_b, tok0, i_hk, stride_vb, stride_vs, stride_vh) + o_n[:, None] * stride_vs + o_d[None, :]
    # [BLOCK_N, BLOCK_D]
    b_k = _load_tile(p_k, m_n[:, None], m_d[None, :], True, EVEN_D)
    b_v = _load_tile(p_v, m_n[:, None], m_d[None, :], True, EVEN_D)
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    first, full, tail = _query_range(start_n, lo, hi, causal, BLOCK_M, BLOCK_N)
    shift = _diag_shift(causal)
    for g in range(group):
        i_h = i_hk * group + g
        p_q0 = _base(q, i_b, tok0, i_h, stride_qb, stride_qs, stride_qh)
        p_do0 = _base(do, i_b, tok0, i_h, stride_dob, stride_dos, stride_doh)
        p_lse0 = lse + i_h.to(tl.int64) * lse_rows + row0
        p_delta0 = delta + i_h.to(tl.int64) * lse_rows + row0
        b_dk, b_dv = _attn_bwd_dkdv_inner(
            b_dk, b_dv, b_k, b_v, p_q0, p_do0, p_lse0, p_delta0, stride_qs, stride_dos,
            o_n, o_d, m_d, first, full, hi, shift, qk_scale,
            MASKED=True, EVEN_D=EVEN_D, DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M,
        )
        b_dk, b_dv = _attn_bwd_dkdv_inner(
            b_dk, b_dv, b_k, b_v, p_q0, p_do0, p_lse0, p_delta0, stride_qs, stride_dos,
            o_n, o_d, m_d, full, tail, hi, shift, qk_scale,
            MASKED=False, EVEN_D=EVEN_D, DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M,
        )
        b_dk, b_dv = _attn_bwd_dkdv_inner(
            b_dk, b_dv, b_k, b_v, p_q0, p_do0, p_lse0, p_delta0, stride_qs, stride_dos,
            o_n, o_d, m_d, tail, hi, hi, shift, qk_scale,
            MASKED=True, EVEN_D=EVEN_D, DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M,
        )

    # keys that are padding got garbage above (their probabilities were never masked): zero them here
    o_n = start_n + tl.arange(0, BLOCK_N)
    m_n = o_n < win_len
    m_key = (o_n >= lo) & (o_n < hi)
    if HAS_MASK:
        b_km = tl.load(key_mask + i_b.to(tl.int64) * stride_mb + o_n * stride_ms, mask=m_n, other=0)
        m_key = m_key & (b_km != 0)
    b_dk = tl.where(m_key[:, None], b_dk * scale, 0.0)
    b_dv = tl.where(m_key[:, None], b_dv, 0.0)
    _store_tile(dk, i_b, tok0, i_hk, stride_dkb, stride_dks, stride_dkh, b_dk, start_n, win_len, head_dim,
                BLOCK_N, BLOCK_D)
    _store_tile(dv, i_b, tok0, i_hk, stride_dvb, stride_dvs, stride_dvh, b_dv, start_n, win_len, head_dim,
                BLOCK_N, BLOCK_D)


@triton.jit
def _attn_bwd_dq_inner(
    b_dq, b_q, b_do, b_lse, b_delta, p_k0, p_v0, p_km0, stride_ks, stride_vs, stride_ms,
    o_m, o_d, m_d, n_start, n_end, hi, shift, qk_scale,
    MASKED: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    o_nn = tl.arange(0, BLOCK_N)
    for start_n in range(n_start, n_end, BLOCK_N):
        o_n = start_n + o_nn
        m_n = o_n < hi
        # [BLOCK_D, BLOCK_N]
        b_kt = _load_tile(p_k0 + o_n[None, :] * stride_ks + o_d[:, None], m_n[None, :], m_d[:, None],
                          MASKED, EVEN_D)
        b_vt = _load_tile(p_v0 + o_n[None, :] * stride_vs + o_d[:, None], m_n[None, :], m_d[:, None],
                          MASKED, EVEN_D)
        # [BLOCK_M, BLOCK_N]
        b_s = tl.dot(b_q, b_kt, input_precision=DOT_PRECISION) * qk_scale
        b_p = tl.exp2(b_s - b_lse[:, None])
        if MASKED:
            m_vis = m_n[None, :] & ((o_n - shift)[None, :] <= o_m[:, None])
            b_p = tl.where(m_vis, b_p, 0.0)
        if HAS_MASK:
            b_km = tl.load(p_km0 + o_n * stride_ms, mask=m_n, other=0)
            b_p = tl.where(b_km[None, :] != 0, b_p, 0.0)
        b_dp = tl.dot(b_do, b_vt, input_precision=DOT_PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq = tl.dot(b_ds.to(b_kt.dtype), tl.trans(b_kt), b_dq, input_precision=DOT_PRECISION)
    return b_dq


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dq_kernel(
    q, k, v, do, dq, lse, delta, cu_seqlens, key_mask, bounds,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dqb, stride_dqs, stride_dqh,
    stride_mb, stride_ms,
    seqlen, lse_rows, num_heads, num_kv_heads, head_dim, causal, scale, qk_scale,
    HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_b = tl.program_id(1)
    i_h = tl.program_id(2)
    if causal:
        i_m = tl.num_programs(0) - 1 - i_m
    i_hk = i_h // (num_heads // num_kv_heads)
    tok0, win_len, row0, lo, hi = _window(cu_seqlens, bounds, i_b, seqlen, HAS_MASK)
    start_m = i_m * BLOCK_M
    if start_m >= win_len:
        return

    if (start_m >= hi) | (start_m + BLOCK_M <= lo):
        _store_tile(dq, i_b, tok0, i_h, stride_dqb, stride_dqs, stride_dqh, tl.zeros([BLOCK_M, BLOCK_D], tl.float32),
                    start_m, win_len, head_dim, BLOCK_M, BLOCK_D)
        return

    o_m = start_m + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < head_dim
    m_m = o_m < win_len
    p_q = _base(q, i_b, tok0, i_h, stride_qb, stride_qs, stride_qh) + o_m[:, None] * stride_qs + o_d[None, :]
    p_do = _base(do, i_b, tok0, i_h, stride_dob, stride_dos, stride_doh) + o_m[:, None] * stride_dos + o_d[None, :]
    p_k0 = _base(k, i_b, tok0, i_hk, stride_kb, stride_ks, stride_kh)
    p_v0 = _base(v, i_b, tok0, i_hk, stride_vb, stride_vs, stride_vh)
    p_km0 = key_mask + i_b.to(tl.int64) * stride_mb
    b_q = _load_tile(p_q, m_m[:, None], m_d[None, :], True, EVEN_D)
    b_do = _load_tile(p_do, m_m[:, None], m_d[None, :], True, EVEN_D)
    # padding rows (and rows past the window) have lse = +inf: probability 0, so dq = 0 there
    p_stats = i_h.to(tl.int64) * lse_rows + row0 + o_m
    b_lse = tl.load(lse + p_stats, mask=m_m, other=float("inf"))
    b_delta = tl.load(delta + p_stats, mask=m_m, other=0.0)
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    mid, end = _key_range(start_m, lo, hi, causal, BLOCK_M, BLOCK_N)
    b_dq = _attn_bwd_dq_inner(
        b_dq, b_q, b_do, b_lse, b_delta, p_k0, p_v0, p_km0, stride_ks, stride_vs, stride_ms,
        o_m, o_d, m_d, lo, mid, hi, _diag_shift(causal), qk_scale,
        MASKED=False, HAS_MASK=HAS_MASK, EVEN_D=EVEN_D, DOT_PRECISION=DOT_PRECISION,
        BLOCK_N=BLOCK_N,
    )
    b_dq = _attn_bwd_dq_inner(
        b_dq, b_q, b_do, b_lse, b_delta, p_k0, p_v0, p_km0, stride_ks, stride_vs, stride_ms,
        o_m, o_d, m_d, mid, end, hi, _diag_shift(causal), qk_scale,
        MASKED=True, HAS_MASK=HAS_MASK, EVEN_D=EVEN_D, DOT_PRECISION=DOT_PRECISION,
        BLOCK_N=BLOCK_N,
    )
    _store_tile(dq, i_b, tok0, i_h, stride_dqb, stride_dqs, stride_dqh, b_dq * scale, start_m, win_len, head_dim,
                BLOCK_M, BLOCK_D)


# ------------------------------------------------------------------------------------------------------------
# configs: fixed and small in the interpreter, autotuned per device capability on CUDA (bellm_kernels.configs)
# ------------------------------------------------------------------------------------------------------------

# Triton adds the tensors' dtypes to the key; never anything derived from sequence lengths
_AUTOTUNE_KEY = ["head_dim", "num_heads", "num_kv_heads", "causal"]

_KERNELS = {"fwd": _attn_fwd_kernel, "dkdv": _attn_bwd_dkdv_kernel, "dq": _attn_bwd_dq_kernel}
_CONFIG_NAMES = {"fwd": "attn_fwd", "dkdv": "attn_bwd_dkdv", "dq": "attn_bwd_dq", "pre": "attn_bwd_preprocess"}
_ELEM_DTYPES = {2: torch.bfloat16, 4: torch.float32}


@functools.cache
def _tuned_kernel(kind: str, head_dim: int, elem: int, capability: tuple[int, int]):
    """An autotuned wrapper of one kernel for this head_dim, element size and device capability (the
    candidates depend on the dtype only through its size)."""
    tiles = configs.autotune_configs(_CONFIG_NAMES[kind], head_dim, _ELEM_DTYPES.get(elem, torch.bfloat16),
                                     capability)
    return triton.autotune(configs=tiles, key=_AUTOTUNE_KEY)(_KERNELS[kind])


def _kernel_and_meta(kind: str, x: torch.Tensor):
    """(kernel, launch kwargs): the autotuner on CUDA, one fixed small config in the interpreter."""
    if x.is_cuda:
        capability = torch.cuda.get_device_capability(x.device)
        return _tuned_kernel(kind, x.shape[-1], x.element_size(), tuple(capability)), {}
    bm, bn = configs.INTERPRETER_BLOCKS[_CONFIG_NAMES[kind]]
    return _KERNELS[kind], {"BLOCK_M": bm, "BLOCK_N": bn}


# ------------------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """How the rows of q/k/v group into windows (packed sequences or padded rows)."""

    is_varlen: bool
    num_seqs: int
    seqlen: int  # padded S (0 when packed: the kernels tell the layouts apart by it)
    max_seqlen: int  # sizes the grid only
    rows: int  # total rows, i.e. B * S or total_tokens
    cu_seqlens: torch.Tensor | None
    key_mask: torch.Tensor | None  # (B, S) uint8 view of the bool mask
    bounds: torch.Tensor | None  # (B, 2) int32: first real position, last real position + 1

    def strides(self, x: torch.Tensor) -> tuple[int, int, int]:
        """(batch, position, head) strides; the head_dim stride is 1."""
        if self.is_varlen:
            return 0, x.stride(0), x.stride(1)
        return x.stride(0), x.stride(1), x.stride(2)

    def pointers(self, device: torch.device) -> dict[str, torch.Tensor]:
        """cu_seqlens, key_mask, bounds; an unused one is an empty tensor of its dtype (never read; typed, so
        that every layout specialises the kernels alike)."""

        def given(x, dtype):
            return x if x is not None else torch.empty(0, dtype=dtype, device=device)

        return dict(
            cu_seqlens=given(self.cu_seqlens, torch.int32),
            key_mask=given(self.key_mask, torch.uint8),
            bounds=given(self.bounds, torch.int32),
        )

    def mask_strides(self) -> tuple[int, int]:
        return (self.key_mask.stride(0), self.key_mask.stride(1)) if self.key_mask is not None else (0, 0)


_MAX_GRID_Y = 65535


def _make_layout(q: torch.Tensor, cu_seqlens, max_seqlen, key_mask) -> _Layout:
    num_seqs = cu_seqlens.numel() - 1 if cu_seqlens is not None else q.shape[0]
    if num_seqs > _MAX_GRID_Y:
        # sequences map to the launch grid's second axis, which CUDA caps at 65535
        raise ValueError(
            f"{num_seqs} sequences in one call; the Triton kernels take at most {_MAX_GRID_Y}: split it"
        )
    if cu_seqlens is not None:
        return _Layout(True, num_seqs, 0, int(max_seqlen), q.shape[0], cu_seqlens, None, None)
    batch, seqlen = q.shape[0], q.shape[1]
    if key_mask is None:
        return _Layout(False, batch, seqlen, seqlen, batch * seqlen, None, None, None)
    positions = torch.arange(seqlen, device=q.device, dtype=torch.int32)
    if seqlen == 0:
        lo = hi = torch.zeros(batch, dtype=torch.int32, device=q.device)
    else:
        lo = torch.where(key_mask, positions, seqlen).amin(dim=1)
        hi = torch.where(key_mask, positions + 1, 0).amax(dim=1)
    bounds = torch.stack([lo, torch.maximum(hi, lo)], dim=1).to(torch.int32).contiguous()
    return _Layout(False, batch, seqlen, seqlen, batch * seqlen, None, key_mask.contiguous().view(torch.uint8), bounds)


def _dot_precision(x: torch.Tensor) -> str | None:
    # float32 inputs get full-precision dots (Triton's default would be TF32 on NVIDIA GPUs); halves: the
    # default
    return "ieee" if x.dtype == torch.float32 else None


def _strides(prefix: str, x: torch.Tensor, lay: _Layout) -> dict[str, int]:
    sb, ss, sh = lay.strides(x)
    return {f"stride_{prefix}b": sb, f"stride_{prefix}s": ss, f"stride_{prefix}h": sh}


def _runtime_bool(flag: bool, x: torch.Tensor) -> bool | int:
    """A run-time bool kernel argument: ``bool`` for compiled kernels, ``int`` in Triton's interpreter (CPU
    tensors), whose Triton 3.6 version rejects bool scalars."""
    return flag if x.device.type != "cpu" else int(flag)


def _head_dim_flags(q: torch.Tensor) -> dict:
    """BLOCK_D (head_dim padded to a power of two) and EVEN_D (no padding: no head_dim mask on loads)."""
    block_d = configs.padded_head_dim(q.shape[-1])
    return {"BLOCK_D": block_d, "EVEN_D": block_d == q.shape[-1]}


def _fwd_args(q, k, v, o, lse, causal: bool, scale: float, lay: _Layout) -> dict:
    """Every argument of ``_attn_fwd_kernel`` but the tiles (also what the offline compile report builds)."""
    stride_mb, stride_ms = lay.mask_strides()
    return dict(
        q=q, k=k, v=v, o=o, lse=lse, **lay.pointers(q.device),
        **_strides("q", q, lay), **_strides("k", k, lay), **_strides("v", v, lay), **_strides("o", o, lay),
        stride_mb=stride_mb, stride_ms=stride_ms,
        seqlen=lay.seqlen, lse_rows=lay.rows, num_heads=q.shape[-2], num_kv_heads=k.shape[-2],
        head_dim=q.shape[-1], causal=_runtime_bool(causal, q), qk_scale=scale * _LOG2E,
        HAS_MASK=lay.key_mask is not None, DOT_PRECISION=_dot_precision(q), **_head_dim_flags(q),
    )


def _bwd_args(do, q, k, v, o, lse, delta, dq, dk, dv, causal: bool, scale: float, lay: _Layout):
    """(preprocess, dkdv, dq) kernel arguments but the tiles (also what the offline compile report builds)."""
    pointers = lay.pointers(q.device)
    pre = dict(
        o=o, do=do, delta=delta, cu_seqlens=pointers["cu_seqlens"],
        **_strides("o", o, lay), **_strides("do", do, lay), seqlen=lay.seqlen, lse_rows=lay.rows,
        head_dim=q.shape[-1], BLOCK_D=configs.padded_head_dim(q.shape[-1]),
    )
    stride_mb, stride_ms = lay.mask_strides()
    shared = dict(
        q=q, k=k, v=v, do=do, lse=lse, delta=delta, **pointers,
        **_strides("q", q, lay), **_strides("k", k, lay), **_strides("v", v, lay), **_strides("do", do, lay),
        stride_mb=stride_mb, stride_ms=stride_ms,
        seqlen=lay.seqlen, lse_rows=lay.rows, num_heads=q.shape[-2], num_kv_heads=k.shape[-2],
        head_dim=q.shape[-1], causal=_runtime_bool(causal, q), scale=scale, qk_scale=scale * _LOG2E,
        HAS_MASK=lay.key_mask is not None, DOT_PRECISION=_dot_precision(q), **_head_dim_flags(q),
    )
    dkdv = dict(shared, dk=dk, dv=dv, **_strides("dk", dk, lay), **_strides("dv", dv, lay))
    dq_args = dict(shared, dq=dq, **_strides("dq", dq, lay))
    return pre, dkdv, dq_args


def _attn_fwd(q, k, v, causal: bool, scale: float, lay: _Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: returns ``o`` (like q) and ``lse`` (heads, rows) float32 in base-2 units."""
    heads = q.shape[-2]
    o = torch.empty_like(q)
    lse = torch.empty((heads, lay.rows), device=q.device, dtype=torch.float32)
    if lay.rows == 0 or lay.max_seqlen == 0 or lay.num_seqs == 0:
        return o, lse
    kernel, meta = _kernel_and_meta("fwd", q)
    grid = lambda m: (triton.cdiv(lay.max_seqlen, m["BLOCK_M"]), lay.num_seqs, heads)
    kernel[grid](**_fwd_args(q, k, v, o, lse, causal, scale, lay), **meta)
    return o, lse


def _attn_bwd(do, q, k, v, o, lse, causal: bool, scale: float, lay: _Layout):
    """Launch the backward: returns ``dq, dk, dv`` shaped like ``q, k, v``."""
    heads, kv_heads = q.shape[-2], k.shape[-2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if lay.rows == 0 or lay.max_seqlen == 0 or lay.num_seqs == 0:
        return dq, dk, dv
    delta = torch.empty_like(lse)
    pre, dkdv, dq_args = _bwd_args(do, q, k, v, o, lse, delta, dq, dk, dv, causal, scale, lay)
    if q.is_cuda:
        (tile,) = configs.autotune_configs("attn_bwd_preprocess", q.shape[-1], q.dtype,
                                           torch.cuda.get_device_capability(q.device))
        pre_meta = dict(tile.kwargs, num_warps=tile.num_warps, num_stages=tile.num_stages)
    else:
        pre_meta = {"BLOCK_M": configs.INTERPRETER_BLOCKS["attn_bwd_preprocess"][0]}
    _attn_bwd_preprocess_kernel[(triton.cdiv(lay.max_seqlen, pre_meta["BLOCK_M"]), lay.num_seqs, heads)](
        **pre, **pre_meta
    )
    kernel, meta = _kernel_and_meta("dkdv", q)
    kernel[lambda m: (triton.cdiv(lay.max_seqlen, m["BLOCK_N"]), lay.num_seqs, kv_heads)](**dkdv, **meta)
    kernel, meta = _kernel_and_meta("dq", q)
    kernel[lambda m: (triton.cdiv(lay.max_seqlen, m["BLOCK_M"]), lay.num_seqs, heads)](**dq_args, **meta)
    return dq, dk, dv


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# ------------------------------------------------------------------------------------------------------------
# the custom ops: bellm::attention_fwd and bellm::attention_bwd
# ------------------------------------------------------------------------------------------------------------
# Registered with torch.library so that torch.compile sees one opaque op per call (no graph break, no trace
# into Triton launches or host reads). The CUDA registration runs the Triton kernels; the CPU one runs
# bellm_kernels.cpu, or the Triton kernels in the interpreter when TRITON_INTERPRET=1. Outputs are always
# contiguous (what the fake implementations promise).


def _lse_shape(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> tuple[int, int]:
    rows = q.shape[0] if cu_seqlens is not None else q.shape[0] * q.shape[1]
    return q.shape[-2], rows


def _triton_fwd(q, k, v, causal, scale, cu_seqlens, max_seqlen, attention_mask):
    lay = _make_layout(q, cu_seqlens, max_seqlen, attention_mask)
    o, lse = _attn_fwd(_unit_stride(q), _unit_stride(k), _unit_stride(v), causal, scale, lay)
    return o.contiguous(), lse


def _triton_bwd(do, q, k, v, out, lse, causal, scale, cu_seqlens, max_seqlen, attention_mask):
    lay = _make_layout(q, cu_seqlens, max_seqlen, attention_mask)
    q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
    dq, dk, dv = _attn_bwd(_unit_stride(do), q, k, v, out, lse, causal, scale, lay)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@torch.library.custom_op("bellm::attention_fwd", mutates_args=(), device_types="cpu")
def _attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
    cu_seqlens: torch.Tensor | None, max_seqlen: int | None, attention_mask: torch.Tensor | None,
    grad_wanted: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)``: out shaped like q (contiguous); lse ``(heads, rows)`` float32, the Triton backward's
    saved log-sum-exp (left unset by the CPU path, whose backward recomputes)."""
    if cu_seqlens is not None:
        _checks.check_cu_seqlens_values(cu_seqlens, q.shape[0], max_seqlen)
    if _checks.use_triton(q):
        return _triton_fwd(q, k, v, causal, scale, cu_seqlens, max_seqlen, attention_mask)
    out = cpu.attention(q, k, v, causal=causal, scale=scale, cu_seqlens=cu_seqlens,
                        attention_mask=attention_mask, eager_order=grad_wanted)
    return out.contiguous(), q.new_empty(_lse_shape(q, cu_seqlens), dtype=torch.float32)


@_attention_fwd_op.register_kernel("cuda")
def _(q, k, v, causal, scale, cu_seqlens, max_seqlen, attention_mask, grad_wanted):
    if cu_seqlens is not None:
        _checks.check_cu_seqlens_values(cu_seqlens, q.shape[0], max_seqlen)
    return _triton_fwd(q, k, v, causal, scale, cu_seqlens, max_seqlen, attention_mask)


@_attention_fwd_op.register_fake
def _(q, k, v, causal, scale, cu_seqlens, max_seqlen, attention_mask, grad_wanted):
    return q.new_empty(q.shape), q.new_empty(_lse_shape(q, cu_seqlens), dtype=torch.float32)


@torch.library.custom_op("bellm::attention_bwd", mutates_args=(), device_types="cpu")
def _attention_bwd_op(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    causal: bool, scale: float, cu_seqlens: torch.Tensor | None, max_seqlen: int | None,
    attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` (contiguous) for the upstream gradient ``do``; the CPU path recomputes its forward
    under ``torch.func.vjp`` (autograd is not recorded inside a custom op's implementation)."""
    if _checks.use_triton(q):
        return _triton_bwd(do, q, k, v, out, lse, causal, scale, cu_seqlens, max_seqlen, attention_mask)
    forward = lambda q_, k_, v_: cpu.attention(  # noqa: E731
        q_, k_, v_, causal=causal, scale=scale, cu_seqlens=cu_seqlens, attention_mask=attention_mask,
        eager_order=True,
    )
    _, vjp = torch.func.vjp(forward, q, k, v)
    # a custom op may not return an input or a view of one (which an empty gradient can be)
    return tuple(g.clone() if g.numel() == 0 else g.contiguous() for g in vjp(do))


@_attention_bwd_op.register_kernel("cuda")
def _(do, q, k, v, out, lse, causal, scale, cu_seqlens, max_seqlen, attention_mask):
    return _triton_bwd(do, q, k, v, out, lse, causal, scale, cu_seqlens, max_seqlen, attention_mask)


@_attention_bwd_op.register_fake
def _(do, q, k, v, out, lse, causal, scale, cu_seqlens, max_seqlen, attention_mask):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale, cu_seqlens, max_seqlen, attention_mask, _ = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, attention_mask)
    ctx.causal, ctx.scale, ctx.max_seqlen = causal, scale, max_seqlen


def _backward(ctx, do, _dlse):
    q, k, v, out, lse, cu_seqlens, attention_mask = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(
        do, q, k, v, out, lse, ctx.causal, ctx.scale, cu_seqlens, ctx.max_seqlen, attention_mask
    )
    return dq, dk, dv, None, None, None, None, None, None


_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------------------
# public op
# ------------------------------------------------------------------------------------------------------------


def _check_inputs(
    q, k, v, causal, cu_seqlens, max_seqlen, attention_mask, scale
) -> tuple[torch.Tensor | None, float]:
    """Every check of :func:`attention`; returns the mask as bool (or None) and the scale."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    _checks.check_dtype("q", q)
    _checks.check_dtype("k", k, like=q)
    _checks.check_dtype("v", v, like=q)
    _checks.check_same_device(q=q, k=k, v=v, cu_seqlens=cu_seqlens, attention_mask=attention_mask)
    if scale is None:
        scale = q.shape[-1] ** -0.5 if q.dim() > 0 and q.shape[-1] > 0 else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (0 < scale < math.inf):
        raise ValueError(
            f"scale must be a positive finite float (or None for head_dim ** -0.5), got {scale!r}"
        )
    scale = float(scale)

    if cu_seqlens is not None:
        if attention_mask is not None:
            raise ValueError(
                "pass either attention_mask (padded (batch, seqlen, heads, head_dim) inputs) or cu_seqlens "
                "(packed (total_tokens, heads, head_dim) inputs), not both"
            )
        if max_seqlen is None:
            raise ValueError(
                "cu_seqlens needs max_seqlen: pass max_seqlen = the longest sequence length (an int)"
            )
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.dim() != 3:
                raise ValueError(
                    f"{name} has shape {tuple(x.shape)}; with cu_seqlens (packed layout) it must be "
                    "(total_tokens, heads, head_dim). For padded (batch, seqlen, heads, head_dim) inputs "
                    "pass attention_mask instead of cu_seqlens"
                )
    else:
        if max_seqlen is not None:
            raise ValueError(
                f"max_seqlen = {max_seqlen!r} was given without cu_seqlens; max_seqlen only applies to the "
                "packed layout: pass cu_seqlens too, or drop max_seqlen"
            )
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.dim() != 4:
                hint = ""
                if x.dim() == 3:
                    hint = (" A 3-D (total_tokens, heads, head_dim) input is packed: pass cu_seqlens and "
                            "max_seqlen.")
                raise ValueError(
                    f"{name} has shape {tuple(x.shape)}; padded inputs must be "
                    f"(batch, seqlen, heads, head_dim).{hint}"
                )
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(
            f"k has shape {tuple(k.shape)} but v has {tuple(v.shape)}; k and v must have one shape"
        )
    if tuple(k.shape[:-2]) != tuple(q.shape[:-2]):
        raise ValueError(
            f"q has shape {tuple(q.shape)} but k has {tuple(k.shape)}; the token dimensions (all but heads "
            "and head_dim) must match"
        )
    head_dim, heads, kv_heads = q.shape[-1], q.shape[-2], k.shape[-2]
    if k.shape[-1] != head_dim:
        raise ValueError(f"q has head_dim {head_dim} but k and v have {k.shape[-1]}; they must be equal")
    if kv_heads == 0 or heads == 0 or heads % kv_heads != 0:
        raise ValueError(
            f"q has {heads} heads and k/v have {kv_heads}; heads must be a positive multiple of kv_heads "
            "(GQA: query head h uses kv head h // (heads // kv_heads))"
        )
    if head_dim % 8 != 0 or not 16 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"head_dim = {head_dim} is not supported; use a multiple of 8 from 16 to {MAX_HEAD_DIM} "
            "(e.g. 32, 64, 80, 96, 128, 256)"
        )
    if cu_seqlens is not None:
        _checks.check_cu_seqlens_meta(cu_seqlens, max_seqlen)  # the values are checked inside the op
        return None, scale
    if attention_mask is not None:
        return _checks.check_mask("attention_mask", attention_mask, q.shape[0], q.shape[1]), scale
    return None, scale


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    attention_mask: torch.Tensor | None = None,
    scale: float | None = None,  # None means head_dim ** -0.5
) -> torch.Tensor:
    """Softmax attention, causal or bidirectional inside each sequence, with GQA; differentiable in q, k, v.

    Args:
        q (torch.Tensor):
            padded ``(batch, seqlen, heads, head_dim)`` or packed ``(total_tokens, heads, head_dim)``.
        k, v (torch.Tensor):
            ``(batch, seqlen, kv_heads, head_dim)`` or ``(total_tokens, kv_heads, head_dim)``, same dtype and
            device as q. GQA: ``heads % kv_heads == 0`` and query head ``h`` uses kv head
            ``h // (heads // kv_heads)`` (q with 6 heads and k/v with 2: heads 0, 1, 2 use kv head 0).
            head_dim: a multiple of 8 from 16 to 256.
        causal (bool):
            True: query ``i`` sees keys ``j <= i`` of its own sequence; False: every key of its own sequence.
            Per call, so a model can mix causal and bidirectional layers.
        cu_seqlens (torch.Tensor):
            packed layout only: int32 ``(num_seqs + 1,)``, ``[0, ..., total_tokens]``, non-decreasing
            (zero-length sequences allowed). Sequences never attend across their boundaries. Default: ``None``.
        max_seqlen (int):
            packed layout only: at least the longest sequence (it sizes the launch grid). Default: ``None``.
        attention_mask (torch.Tensor):
            padded layout only: ``(batch, seqlen)`` bool or 0/1 integer, 1 = real token, padding on either
            side or mixed. Key ``j`` is visible to query ``i`` iff ``attention_mask[b, j]`` and
            (not causal or ``j <= i``). ``None`` with no ``cu_seqlens`` means a dense batch without padding.
            Default: ``None``.
        scale (float):
            softmax scale. Default: ``head_dim ** -0.5``.

    Returns:
        A tensor shaped like ``q`` in ``q.dtype`` (float32 accumulation inside). Padded query rows, and rows
        that see no key, are zeros, with zero gradients (never NaN).

    Raises:
        TypeError / ValueError before any launch, naming the value and the fix: unsupported or mismatched
        dtypes, devices, ranks or shapes, ``heads % kv_heads != 0``, unsupported head_dim, malformed
        ``cu_seqlens``, ``attention_mask`` and ``cu_seqlens`` together, ``max_seqlen`` missing, misplaced or too
        small.

    Runs as the custom op ``torch.ops.bellm.attention_fwd`` (with ``bellm::attention_bwd`` as its backward),
    so ``torch.compile(fullgraph=True)`` traces it without a graph break. CUDA tensors run the Triton
    kernels; CPU tensors run :func:`bellm_kernels.cpu.attention` (PyTorch SDPA), or the Triton kernels in
    Triton's interpreter when ``TRITON_INTERPRET=1`` (tests). The output is contiguous.
    """
    key_mask, scale = _check_inputs(q, k, v, causal, cu_seqlens, max_seqlen, attention_mask, scale)
    grad_wanted = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if grad_wanted and not _checks.use_triton(q) and not torch.compiler.is_compiling():
        # eager CPU training: autograd records the CPU path itself, where the op's backward would recompute
        # the forward (autograd cannot record inside a custom op)
        if cu_seqlens is not None:
            _checks.check_cu_seqlens_values(cu_seqlens, q.shape[0], max_seqlen)
        return cpu.attention(q, k, v, causal=causal, scale=scale, cu_seqlens=cu_seqlens, attention_mask=key_mask,
                             eager_order=True)
    out, _ = _attention_fwd_op(q, k, v, causal, scale, cu_seqlens, max_seqlen, key_mask, grad_wanted)
    return out
