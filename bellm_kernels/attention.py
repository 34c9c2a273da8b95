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

Autotuning (CUDA only) keys on head_dim, head counts, causal and the dtypes; sequence lengths are runtime ints
(``do_not_specialize``), so new packed lengths neither retune nor recompile. In Triton's interpreter (CPU
tensors with ``TRITON_INTERPRET=1``) one small fixed config runs instead.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bellm_kernels import _checks, cpu

__all__ = ["attention", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634


# ------------------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------------------


@triton.jit
def _window(cu_seqlens, bounds, i_b, seqlen, IS_VARLEN: tl.constexpr, HAS_MASK: tl.constexpr):
    """(row0, win_len, lo, hi): first row of the window in ``(rows, ...)`` coordinates, its length and the
    range of positions inside it that may hold real tokens."""
    if IS_VARLEN:
        start = tl.load(cu_seqlens + i_b)
        win_len = tl.load(cu_seqlens + i_b + 1) - start
        row0 = start.to(tl.int64)
        lo = win_len * 0
        hi = win_len
    else:
        row0 = i_b.to(tl.int64) * seqlen
        win_len = seqlen
        if HAS_MASK:
            lo = tl.load(bounds + 2 * i_b)
            hi = tl.load(bounds + 2 * i_b + 1)
        else:
            lo = seqlen * 0
            hi = seqlen
    return row0, win_len, lo, hi


@triton.jit
def _base(ptr, row0, i_b, stride_b, stride_s, IS_VARLEN: tl.constexpr):
    """Pointer to position 0 of the window."""
    if IS_VARLEN:
        return ptr + row0 * stride_s
    else:
        return ptr + i_b.to(tl.int64) * stride_b


@triton.jit
def _load_rows(ptrs, m_rows, m_d, ROW_MASK: tl.constexpr, EVEN_D: tl.constexpr):
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
    acc, l_i, m_i, b_q, k_base, v_base, km_base, stride_ks, stride_vs, stride_ms,
    offs_m, offs_d, m_d, n_start, n_end, hi, qk_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(n_start, n_end, BLOCK_N):
        cols = start_n + offs_n
        m_col = cols < hi
        # [BLOCK_D, BLOCK_N]
        b_kt = _load_rows(k_base + cols[None, :] * stride_ks + offs_d[:, None], m_col[None, :], m_d[:, None],
                          MASKED, EVEN_D)
        # [BLOCK_M, BLOCK_N]
        b_s = tl.dot(b_q, b_kt, input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            vis = m_col[None, :]
            if CAUSAL:
                vis = vis & (cols[None, :] <= offs_m[:, None])
            b_s = tl.where(vis, b_s, float("-inf"))
        if HAS_MASK:
            b_km = tl.load(km_base + cols * stride_ms, mask=m_col, other=0)
            b_s = tl.where(b_km[None, :] != 0, b_s, float("-inf"))
        # m_i starts finite, so alpha is never exp2(-inf - -inf)
        m_new = tl.maximum(m_i, tl.max(b_s, 1))
        alpha = tl.exp2(m_i - m_new)
        b_p = tl.exp2(b_s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(b_p, 1)
        # [BLOCK_N, BLOCK_D]
        b_v = _load_rows(v_base + cols[:, None] * stride_vs + offs_d[None, :], m_col[:, None], m_d[None, :],
                         MASKED, EVEN_D)
        acc = tl.dot(b_p.to(b_v.dtype), b_v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["seqlen", "lse_rows"])
def _attn_fwd_kernel(
    q, k, v, o, lse, cu_seqlens, key_mask, bounds,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    stride_mb, stride_ms,
    seqlen, lse_rows, qk_scale,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_b = tl.program_id(1)
    i_h = tl.program_id(2)
    if CAUSAL:
        # the longest causal rows first: better tail balance
        i_m = tl.num_programs(0) - 1 - i_m
    i_hk = i_h // (NUM_HEADS // NUM_KV_HEADS)
    row0, win_len, lo, hi = _window(cu_seqlens, bounds, i_b, seqlen, IS_VARLEN, HAS_MASK)
    start_m = i_m * BLOCK_M
    if start_m >= win_len:
        return

    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < HEAD_DIM
    m_row = offs_m < win_len
    o_base = _base(o, row0, i_b, stride_ob, stride_os, IS_VARLEN) + i_h * stride_oh
    p_o = o_base + offs_m[:, None] * stride_os + offs_d[None, :]
    p_lse = lse + i_h.to(tl.int64) * lse_rows + row0 + offs_m
    if (start_m >= hi) | (start_m + BLOCK_M <= lo):
        # a block of padding: zeros, and lse = +inf so the backward sees probability 0
        m_store = m_row[:, None] & m_d[None, :]
        tl.store(p_o, tl.zeros([BLOCK_M, BLOCK_D], dtype=o.dtype.element_ty), mask=m_store)
        tl.store(p_lse, tl.full([BLOCK_M], float("inf"), tl.float32), mask=m_row)
        return

    q_base = _base(q, row0, i_b, stride_qb, stride_qs, IS_VARLEN) + i_h * stride_qh
    k_base = _base(k, row0, i_b, stride_kb, stride_ks, IS_VARLEN) + i_hk * stride_kh
    v_base = _base(v, row0, i_b, stride_vb, stride_vs, IS_VARLEN) + i_hk * stride_vh
    km_base = key_mask + i_b.to(tl.int64) * stride_mb
    # [BLOCK_M, BLOCK_D]
    b_q = _load_rows(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], m_row[:, None], m_d[None, :],
                     True, EVEN_D)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # key blocks start at lo; the first n_full of them need no causal or end-of-sequence mask
    if CAUSAL:
        kv_hi = tl.minimum(hi, start_m + BLOCK_M)
        n_full = tl.maximum(tl.minimum(start_m + 1, hi) - lo, 0) // BLOCK_N
    else:
        kv_hi = hi
        n_full = tl.maximum(hi - lo, 0) // BLOCK_N
    mid = lo + n_full * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, b_q, k_base, v_base, km_base, stride_ks, stride_vs, stride_ms,
        offs_m, offs_d, m_d, lo, mid, hi, qk_scale,
        False, CAUSAL, HAS_MASK, EVEN_D, DOT_PRECISION, BLOCK_N,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, b_q, k_base, v_base, km_base, stride_ks, stride_vs, stride_ms,
        offs_m, offs_d, m_d, mid, kv_hi, hi, qk_scale,
        True, CAUSAL, HAS_MASK, EVEN_D, DOT_PRECISION, BLOCK_N,
    )

    valid = (offs_m >= lo) & (offs_m < hi) & (l_i > 0)
    if HAS_MASK:
        b_qm = tl.load(km_base + offs_m * stride_ms, mask=m_row, other=0)
        valid = valid & (b_qm != 0)
    l_safe = tl.where(valid, l_i, 1.0)
    b_o = tl.where(valid[:, None], acc / l_safe[:, None], 0.0)
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_row[:, None] & m_d[None, :])
    tl.store(p_lse, tl.where(valid, m_i + tl.log2(l_safe), float("inf")), mask=m_row)


@triton.jit(do_not_specialize=["seqlen", "lse_rows"])
def _attn_bwd_preprocess_kernel(
    o, do, delta, cu_seqlens, bounds,
    stride_ob, stride_os, stride_oh,
    stride_dob, stride_dos, stride_doh,
    seqlen, lse_rows,
    HEAD_DIM: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_b = tl.program_id(1)
    i_h = tl.program_id(2)
    row0, win_len, lo, hi = _window(cu_seqlens, bounds, i_b, seqlen, IS_VARLEN, HAS_MASK)
    start_m = i_m * BLOCK_M
    if start_m >= win_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m = (offs_m < win_len)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o_base = _base(o, row0, i_b, stride_ob, stride_os, IS_VARLEN) + i_h * stride_oh
    do_base = _base(do, row0, i_b, stride_dob, stride_dos, IS_VARLEN) + i_h * stride_doh
    b_o = tl.load(o_base + offs_m[:, None] * stride_os + offs_d[None, :], mask=m, other=0.0).to(tl.float32)
    b_do = tl.load(do_base + offs_m[:, None] * stride_dos + offs_d[None, :], mask=m, other=0.0).to(tl.float32)
    p_delta = delta + i_h.to(tl.int64) * lse_rows + row0 + offs_m
    tl.store(p_delta, tl.sum(b_o * b_do, 1), mask=offs_m < win_len)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk_acc, dv_acc, b_k, b_v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos,
    offs_n, offs_d, m_d, m_start, m_end, hi, qk_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    offs_mm = tl.arange(0, BLOCK_M)
    for start_m in range(m_start, m_end, BLOCK_M):
        offs_m = start_m + offs_mm
        m_row = offs_m < hi
        # [BLOCK_M, BLOCK_D]
        b_q = _load_rows(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], m_row[:, None], m_d[None, :],
                         MASKED, EVEN_D)
        b_do = _load_rows(do_base + offs_m[:, None] * stride_dos + offs_d[None, :], m_row[:, None],
                          m_d[None, :], MASKED, EVEN_D)
        if MASKED:
            b_lse = tl.load(lse_base + offs_m, mask=m_row, other=float("inf"))
            b_delta = tl.load(delta_base + offs_m, mask=m_row, other=0.0)
        else:
            b_lse = tl.load(lse_base + offs_m)
            b_delta = tl.load(delta_base + offs_m)
        # [BLOCK_N, BLOCK_M]; rows of padding have lse = +inf, hence probability 0
        b_st = tl.dot(b_k, tl.trans(b_q), input_precision=DOT_PRECISION) * qk_scale
        b_pt = tl.exp2(b_st - b_lse[None, :])
        if MASKED:
            vis = m_row[None, :]
            if CAUSAL:
                vis = vis & (offs_m[None, :] >= offs_n[:, None])
            b_pt = tl.where(vis, b_pt, 0.0)
        dv_acc = tl.dot(b_pt.to(b_do.dtype), b_do, dv_acc, input_precision=DOT_PRECISION)
        b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=DOT_PRECISION)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        dk_acc = tl.dot(b_dst.to(b_q.dtype), b_q, dk_acc, input_precision=DOT_PRECISION)
    return dk_acc, dv_acc


@triton.jit(do_not_specialize=["seqlen", "lse_rows"])
def _attn_bwd_dkdv_kernel(
    q, k, v, do, dk, dv, lse, delta, cu_seqlens, key_mask, bounds,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh,
    stride_mb, stride_ms,
    seqlen, lse_rows, scale, qk_scale,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    GROUP: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
    i_n = tl.program_id(0)
    i_b = tl.program_id(1)
    i_hk = tl.program_id(2)
    row0, win_len, lo, hi = _window(cu_seqlens, bounds, i_b, seqlen, IS_VARLEN, HAS_MASK)
    start_n = i_n * BLOCK_N
    if start_n >= win_len:
        return

    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < HEAD_DIM
    m_row = offs_n < win_len
    m_store = m_row[:, None] & m_d[None, :]
    dk_base = _base(dk, row0, i_b, stride_dkb, stride_dks, IS_VARLEN) + i_hk * stride_dkh
    dv_base = _base(dv, row0, i_b, stride_dvb, stride_dvs, IS_VARLEN) + i_hk * stride_dvh
    p_dk = dk_base + offs_n[:, None] * stride_dks + offs_d[None, :]
    p_dv = dv_base + offs_n[:, None] * stride_dvs + offs_d[None, :]
    if (start_n >= hi) | (start_n + BLOCK_N <= lo):
        tl.store(p_dk, tl.zeros([BLOCK_N, BLOCK_D], dtype=dk.dtype.element_ty), mask=m_store)
        tl.store(p_dv, tl.zeros([BLOCK_N, BLOCK_D], dtype=dv.dtype.element_ty), mask=m_store)
        return

    k_base = _base(k, row0, i_b, stride_kb, stride_ks, IS_VARLEN) + i_hk * stride_kh
    v_base = _base(v, row0, i_b, stride_vb, stride_vs, IS_VARLEN) + i_hk * stride_vh
    # [BLOCK_N, BLOCK_D]
    b_k = _load_rows(k_base + offs_n[:, None] * stride_ks + offs_d[None, :], m_row[:, None], m_d[None, :],
                     True, EVEN_D)
    b_v = _load_rows(v_base + offs_n[:, None] * stride_vs + offs_d[None, :], m_row[:, None], m_d[None, :],
                     True, EVEN_D)
    dk_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # query blocks start at m_lo: [m_lo, m_full) on the causal diagonal (masked), [m_full, m_tail) need no
    # mask,
    # [m_tail, hi) hold the sequence end (masked)
    if CAUSAL:
        m_lo = tl.maximum(lo, start_n)
        n_diag = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - m_lo, 0), BLOCK_M)
    else:
        m_lo = lo
        n_diag = 0
    n_even = tl.maximum(hi - m_lo, 0) // BLOCK_M
    n_diag = tl.minimum(n_diag, n_even)
    m_full = m_lo + n_diag * BLOCK_M
    m_tail = m_lo + n_even * BLOCK_M

    for g in range(GROUP):
        i_h = i_hk * GROUP + g
        q_base = _base(q, row0, i_b, stride_qb, stride_qs, IS_VARLEN) + i_h * stride_qh
        do_base = _base(do, row0, i_b, stride_dob, stride_dos, IS_VARLEN) + i_h * stride_doh
        lse_base = lse + i_h.to(tl.int64) * lse_rows + row0
        delta_base = delta + i_h.to(tl.int64) * lse_rows + row0
        dk_acc, dv_acc = _attn_bwd_dkdv_inner(
            dk_acc, dv_acc, b_k, b_v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos,
            offs_n, offs_d, m_d, m_lo, m_full, hi, qk_scale, True, CAUSAL, EVEN_D, DOT_PRECISION, BLOCK_M,
        )
        dk_acc, dv_acc = _attn_bwd_dkdv_inner(
            dk_acc, dv_acc, b_k, b_v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos,
            offs_n, offs_d, m_d, m_full, m_tail, hi, qk_scale, False, CAUSAL, EVEN_D, DOT_PRECISION, BLOCK_M,
        )
        dk_acc, dv_acc = _attn_bwd_dkdv_inner(
            dk_acc, dv_acc, b_k, b_v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos,
            offs_n, offs_d, m_d, m_tail, hi, hi, qk_scale, True, CAUSAL, EVEN_D, DOT_PRECISION, BLOCK_M,
        )

    # keys that are padding got garbage above (their probabilities were never masked): zero them here
    key_ok = (offs_n >= lo) & (offs_n < hi)
    if HAS_MASK:
        b_km = tl.load(key_mask + i_b.to(tl.int64) * stride_mb + offs_n * stride_ms, mask=m_row, other=0)
        key_ok = key_ok & (b_km != 0)
    dk_acc = tl.where(key_ok[:, None], dk_acc * scale, 0.0)
    dv_acc = tl.where(key_ok[:, None], dv_acc, 0.0)
    tl.store(p_dk, dk_acc.to(dk.dtype.element_ty), mask=m_store)
    tl.store(p_dv, dv_acc.to(dv.dtype.element_ty), mask=m_store)


@triton.jit
def _attn_bwd_dq_inner(
    dq_acc, b_q, b_do, b_lse, b_delta, k_base, v_base, km_base, stride_ks, stride_vs, stride_ms,
    offs_m, offs_d, m_d, n_start, n_end, hi, qk_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(n_start, n_end, BLOCK_N):
        cols = start_n + offs_n
        m_col = cols < hi
        # [BLOCK_D, BLOCK_N]
        b_kt = _load_rows(k_base + cols[None, :] * stride_ks + offs_d[:, None], m_col[None, :], m_d[:, None],
                          MASKED, EVEN_D)
        b_vt = _load_rows(v_base + cols[None, :] * stride_vs + offs_d[:, None], m_col[None, :], m_d[:, None],
                          MASKED, EVEN_D)
        # [BLOCK_M, BLOCK_N]
        b_s = tl.dot(b_q, b_kt, input_precision=DOT_PRECISION) * qk_scale
        b_p = tl.exp2(b_s - b_lse[:, None])
        if MASKED:
            vis = m_col[None, :]
            if CAUSAL:
                vis = vis & (cols[None, :] <= offs_m[:, None])
            b_p = tl.where(vis, b_p, 0.0)
        if HAS_MASK:
            b_km = tl.load(km_base + cols * stride_ms, mask=m_col, other=0)
            b_p = tl.where(b_km[None, :] != 0, b_p, 0.0)
        b_dp = tl.dot(b_do, b_vt, input_precision=DOT_PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        dq_acc = tl.dot(b_ds.to(b_kt.dtype), tl.trans(b_kt), dq_acc, input_precision=DOT_PRECISION)
    return dq_acc


@triton.jit(do_not_specialize=["seqlen", "lse_rows"])
def _attn_bwd_dq_kernel(
    q, k, v, do, dq, lse, delta, cu_seqlens, key_mask, bounds,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dqb, stride_dqs, stride_dqh,
    stride_mb, stride_ms,
    seqlen, lse_rows, scale, qk_scale,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_b = tl.program_id(1)
    i_h = tl.program_id(2)
    if CAUSAL:
        i_m = tl.num_programs(0) - 1 - i_m
    i_hk = i_h // (NUM_HEADS // NUM_KV_HEADS)
    row0, win_len, lo, hi = _window(cu_seqlens, bounds, i_b, seqlen, IS_VARLEN, HAS_MASK)
    start_m = i_m * BLOCK_M
    if start_m >= win_len:
        return

    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < HEAD_DIM
    m_row = offs_m < win_len
    m_store = m_row[:, None] & m_d[None, :]
    dq_base = _base(dq, row0, i_b, stride_dqb, stride_dqs, IS_VARLEN) + i_h * stride_dqh
    p_dq = dq_base + offs_m[:, None] * stride_dqs + offs_d[None, :]
    if (start_m >= hi) | (start_m + BLOCK_M <= lo):
        tl.store(p_dq, tl.zeros([BLOCK_M, BLOCK_D], dtype=dq.dtype.element_ty), mask=m_store)
        return

    q_base = _base(q, row0, i_b, stride_qb, stride_qs, IS_VARLEN) + i_h * stride_qh
    do_base = _base(do, row0, i_b, stride_dob, stride_dos, IS_VARLEN) + i_h * stride_doh
    k_base = _base(k, row0, i_b, stride_kb, stride_ks, IS_VARLEN) + i_hk * stride_kh
    v_base = _base(v, row0, i_b, stride_vb, stride_vs, IS_VARLEN) + i_hk * stride_vh
    km_base = key_mask + i_b.to(tl.int64) * stride_mb
    b_q = _load_rows(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], m_row[:, None], m_d[None, :],
                     True, EVEN_D)
    b_do = _load_rows(do_base + offs_m[:, None] * stride_dos + offs_d[None, :], m_row[:, None], m_d[None, :],
                      True, EVEN_D)
    # padding rows (and rows past the window) have lse = +inf: probability 0, so dq = 0 there
    p_stats = i_h.to(tl.int64) * lse_rows + row0 + offs_m
    b_lse = tl.load(lse + p_stats, mask=m_row, other=float("inf"))
    b_delta = tl.load(delta + p_stats, mask=m_row, other=0.0)
    dq_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        kv_hi = tl.minimum(hi, start_m + BLOCK_M)
        n_full = tl.maximum(tl.minimum(start_m + 1, hi) - lo, 0) // BLOCK_N
    else:
        kv_hi = hi
        n_full = tl.maximum(hi - lo, 0) // BLOCK_N
    mid = lo + n_full * BLOCK_N
    dq_acc = _attn_bwd_dq_inner(
        dq_acc, b_q, b_do, b_lse, b_delta, k_base, v_base, km_base, stride_ks, stride_vs, stride_ms,
        offs_m, offs_d, m_d, lo, mid, hi, qk_scale, False, CAUSAL, HAS_MASK, EVEN_D, DOT_PRECISION, BLOCK_N,
    )
    dq_acc = _attn_bwd_dq_inner(
        dq_acc, b_q, b_do, b_lse, b_delta, k_base, v_base, km_base, stride_ks, stride_vs, stride_ms,
        offs_m, offs_d, m_d, mid, kv_hi, hi, qk_scale, True, CAUSAL, HAS_MASK, EVEN_D, DOT_PRECISION, BLOCK_N,
    )
    tl.store(p_dq, (dq_acc * scale).to(dq.dtype.element_ty), mask=m_store)


# ------------------------------------------------------------------------------------------------------------
# configs: fixed and small in the interpreter, autotuned per device capability on CUDA
# ------------------------------------------------------------------------------------------------------------

# Triton adds the tensors' dtypes to the key; never anything derived from sequence lengths
_AUTOTUNE_KEY = ["HEAD_DIM", "NUM_HEADS", "NUM_KV_HEADS", "CAUSAL"]

# (BLOCK_M, BLOCK_N) for the interpreter: unequal on purpose, so the block logic is exercised
_INTERPRETER_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16), "pre": (32, 0)}

# shared memory per block (KiB) by compute capability; unknown devices get the smallest
_SMEM_KIB = {(8, 0): 163, (8, 7): 163, (9, 0): 227, (10, 0): 227}


def _candidates(kind: str, block_d: int) -> list[tuple[int, int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) candidates per kernel and padded head_dim."""
    if kind == "fwd":
        if block_d <= 64:
            return [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 4, 4)]
        if block_d <= 128:
            return [(128, 64, 4, 3), (128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2),
                    (64, 32, 4, 4)]
        return [(64, 32, 4, 2), (64, 64, 8, 2), (128, 32, 8, 2), (128, 64, 8, 2), (32, 32, 4, 2)]
    if kind == "dkdv":  # BLOCK_M loops over queries, BLOCK_N keys are held
        if block_d <= 64:
            return [(32, 128, 8, 3), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 2)]
        if block_d <= 128:
            return [(32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 2), (16, 64, 4, 3)]
        # two [BLOCK_N, 256] float32 accumulators live in registers: small BLOCK_N or 8 warps
        return [(32, 64, 8, 2), (16, 32, 4, 2), (32, 32, 4, 2), (16, 64, 8, 1)]
    if kind == "dq":  # BLOCK_M queries are held, BLOCK_N loops over keys
        if block_d <= 64:
            return [(128, 32, 8, 3), (128, 64, 8, 2), (64, 32, 4, 3), (64, 64, 4, 2)]
        if block_d <= 128:
            return [(128, 32, 8, 2), (64, 32, 4, 3), (128, 64, 8, 2), (64, 64, 4, 2), (64, 16, 4, 3)]
        return [(64, 32, 8, 2), (64, 16, 4, 2), (32, 32, 4, 2), (64, 64, 8, 1)]
    raise ValueError(kind)


def _smem_bytes(kind: str, block_m: int, block_n: int, block_d: int, stages: int, elem: int) -> int:
    """Rough shared-memory need: resident dot operands plus (stages - 1) buffers of the streamed pair (matches
    what Triton 3.9 allocates for sm90 to within ~30 %)."""
    buffers = max(stages - 1, 1)
    if kind == "fwd":  # q lives in registers; k and v stream
        return buffers * 2 * block_n * block_d * elem
    if kind == "dkdv":  # k, v resident; q, dO stream
        return (2 * block_n + buffers * 2 * block_m) * block_d * elem
    return (2 * block_m + buffers * 2 * block_n) * block_d * elem  # dq: q, dO resident; k, v stream


_KERNELS = {"fwd": _attn_fwd_kernel, "dkdv": _attn_bwd_dkdv_kernel, "dq": _attn_bwd_dq_kernel}


@functools.cache
def _tuned_kernel(kind: str, block_d: int, elem: int, capability: tuple[int, int]):
    """An autotuned wrapper of one kernel for this padded head_dim, element size and device capability."""
    budget = _SMEM_KIB.get(capability, 99) * 1024
    configs = []
    for bm, bn, warps, stages in _candidates(kind, block_d):
        # fp32 operands double the tiles: drop the largest ones
        if elem == 4 and bm * bn > 64 * 64:
            continue
        while stages > 1 and _smem_bytes(kind, bm, bn, block_d, stages, elem) > budget:
            stages -= 1
        if _smem_bytes(kind, bm, bn, block_d, stages, elem) > budget:
            continue
        configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages))
    if not configs:
        configs = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    configs = list({(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages): c
                    for c in configs}.values())
    return triton.autotune(configs=configs, key=_AUTOTUNE_KEY)(_KERNELS[kind])


def _kernel_and_meta(kind: str, x: torch.Tensor, block_d: int):
    """(kernel, launch kwargs): the autotuner on CUDA, one fixed small config in the interpreter."""
    if x.is_cuda:
        capability = torch.cuda.get_device_capability(x.device)
        return _tuned_kernel(kind, block_d, x.element_size(), tuple(capability)), {}
    bm, bn = _INTERPRETER_BLOCKS[kind]
    return _KERNELS[kind], {"BLOCK_M": bm, "BLOCK_N": bn}


# ------------------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """How the rows of q/k/v group into windows (packed sequences or padded rows)."""

    is_varlen: bool
    num_seqs: int
    seqlen: int  # padded S (0 when packed)
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

    def pointers(self, dummy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """cu_seqlens, key_mask, bounds; an unused one is replaced by ``dummy`` (never read)."""
        return (
            self.cu_seqlens if self.cu_seqlens is not None else dummy,
            self.key_mask if self.key_mask is not None else dummy,
            self.bounds if self.bounds is not None else dummy,
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
    return _Layout(False, batch, seqlen, seqlen, batch * seqlen, None, key_mask.view(torch.uint8), bounds)


def _dot_precision(x: torch.Tensor) -> str | None:
    # float32 inputs get full-precision dots (Triton's default would be TF32 on NVIDIA GPUs); halves: the
    # default
    return "ieee" if x.dtype == torch.float32 else None


def _attn_fwd(q, k, v, causal: bool, scale: float, lay: _Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: returns ``o`` (like q) and ``lse`` (heads, rows) float32 in base-2 units."""
    heads, kv_heads, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
    o = torch.empty_like(q)
    lse = torch.empty((heads, lay.rows), device=q.device, dtype=torch.float32)
    if lay.rows == 0 or lay.max_seqlen == 0 or lay.num_seqs == 0:
        return o, lse
    block_d = max(16, triton.next_power_of_2(head_dim))
    kernel, meta = _kernel_and_meta("fwd", q, block_d)
    cu, km, bounds = lay.pointers(q)
    grid = lambda m: (triton.cdiv(lay.max_seqlen, m["BLOCK_M"]), lay.num_seqs, heads)
    kernel[grid](
        q, k, v, o, lse, cu, km, bounds,
        *lay.strides(q), *lay.strides(k), *lay.strides(v), *lay.strides(o), *lay.mask_strides(),
        lay.seqlen, lay.rows, scale * _LOG2E,
        NUM_HEADS=heads, NUM_KV_HEADS=kv_heads, HEAD_DIM=head_dim, CAUSAL=causal,
        IS_VARLEN=lay.is_varlen, HAS_MASK=lay.key_mask is not None, DOT_PRECISION=_dot_precision(q),
        BLOCK_D=block_d, **meta,
    )
    return o, lse


def _attn_bwd(do, q, k, v, o, lse, causal: bool, scale: float, lay: _Layout):
    """Launch the backward: returns ``dq, dk, dv`` shaped like ``q, k, v``."""
    heads, kv_heads, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if lay.rows == 0 or lay.max_seqlen == 0 or lay.num_seqs == 0:
        return dq, dk, dv
    block_d = max(16, triton.next_power_of_2(head_dim))
    cu, km, bounds = lay.pointers(q)
    delta = torch.empty_like(lse)
    pre_m = _INTERPRETER_BLOCKS["pre"][0] if not q.is_cuda else max(16, min(128, 8192 // block_d))
    _attn_bwd_preprocess_kernel[(triton.cdiv(lay.max_seqlen, pre_m), lay.num_seqs, heads)](
        o, do, delta, cu, bounds, *lay.strides(o), *lay.strides(do), lay.seqlen, lay.rows,
        HEAD_DIM=head_dim, IS_VARLEN=lay.is_varlen, HAS_MASK=lay.key_mask is not None,
        BLOCK_D=block_d, BLOCK_M=pre_m,
    )
    flags = dict(
        NUM_HEADS=heads, NUM_KV_HEADS=kv_heads, HEAD_DIM=head_dim, CAUSAL=causal, IS_VARLEN=lay.is_varlen,
        HAS_MASK=lay.key_mask is not None, DOT_PRECISION=_dot_precision(q), BLOCK_D=block_d,
    )
    kernel, meta = _kernel_and_meta("dkdv", q, block_d)
    kernel[lambda m: (triton.cdiv(lay.max_seqlen, m["BLOCK_N"]), lay.num_seqs, kv_heads)](
        q, k, v, do, dk, dv, lse, delta, cu, km, bounds,
        *lay.strides(q), *lay.strides(k), *lay.strides(v), *lay.strides(do), *lay.strides(dk),
        *lay.strides(dv), *lay.mask_strides(),
        lay.seqlen, lay.rows, scale, scale * _LOG2E, **flags, **meta,
    )
    kernel, meta = _kernel_and_meta("dq", q, block_d)
    kernel[lambda m: (triton.cdiv(lay.max_seqlen, m["BLOCK_M"]), lay.num_seqs, heads)](
        q, k, v, do, dq, lse, delta, cu, km, bounds,
        *lay.strides(q), *lay.strides(k), *lay.strides(v), *lay.strides(do), *lay.strides(dq),
        *lay.mask_strides(),
        lay.seqlen, lay.rows, scale, scale * _LOG2E, **flags, **meta,
    )
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
