"""The CPU execution path of :func:`bellm_kernels.attention` and :func:`bellm_kernels.pool`.

Built on ``torch.nn.functional.scaled_dot_product_attention``, which on CPU runs PyTorch's blocked
(flash-style) kernel: no ``(seqlen, seqlen)`` score matrix is materialised for a sequence without a mask, GQA
runs through ``enable_gqa`` (no ``repeat_interleave`` copies of k and v), and gradients come from PyTorch's own
backward. Same layouts, masks and results as :mod:`bellm_kernels.reference` (the ground truth in the tests):

- padded ``q (batch, seqlen, heads, head_dim)``, ``k, v (batch, seqlen, kv_heads, head_dim)`` with an optional
  ``attention_mask (batch, seqlen)`` bool, True = real token (left, right or mixed padding, holes). Without a
  mask, or with right padding and ``causal``, no mask tensor is built at all; right padding in a bidirectional
  layer needs a ``(batch, 1, 1, seqlen)`` key mask; any other mask a ``(batch, 1, seqlen, seqlen)`` bool
  (shared by the heads);
- packed ``q (total_tokens, heads, head_dim)`` with int32 ``cu_seqlens``: sequences are grouped by length
  (:func:`plan_groups`), a group of one sequence, or of equal-length neighbours, is a view (no copy), and other
  groups are gathered into a right-padded ``(group, max_len)`` batch.

Padded query rows, and rows that see no key, are zeros with zero gradients (never NaN): such rows are given
every key to look at, then multiplied by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bellm_kernels._checks import tensor_version

__all__ = ["attention", "pool", "plan_groups", "MAX_PAD_WASTE", "EAGER_ORDER_MAX_LEN"]

# A packed group may hold up to this fraction of padding on top of its real tokens: fewer, larger SDPA calls
# save per-call overhead on short sentences until the padding costs more than the calls save. A chosen value,
# not yet tuned by measurement.
MAX_PAD_WASTE = 0.25

# When gradients are wanted (training) and no sequence is longer than this, attention runs in the operation
# order of transformers' eager attention on one batch padded to the longest sequence (scores = q @ k^T *
# scale, masked float32 softmax, @ v) instead of SDPA's blocked kernel, so a trained model's gradients equal
# those of the eager model on a padded batch to float32 resolution (the model tests compare them at 1e-5).
# The scores are then materialised, (batch, heads, L, L) with L <= this bound; longer inputs use SDPA.
EAGER_ORDER_MAX_LEN = 256


# --------------------------------------------------------------------------------------------------------
# packed layout: grouping sequences into dense batches
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Group:
    """``count`` sequences of at most ``max_len`` tokens, attended as one dense batch.

    ``start`` is set when the group is a contiguous run of equal-length sequences (a free view of the packed
    tensors); otherwise ``gather`` (count * max_len,) indexes the packed tokens (pads repeat a real token of
    their own sequence, hidden by ``key_mask`` (count, max_len) and dropped by ``keep`` (tokens,))."""

    count: int
    max_len: int
    tokens: torch.Tensor  # (tokens,) int64: packed positions of the group's real tokens, in group order
    start: int | None = None
    gather: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    keep: torch.Tensor | None = None


def plan_groups(lengths: list[int], max_waste: float = MAX_PAD_WASTE) -> list[list[int]]:
    """Indices of the non-empty sequences, grouped so that each group's padding ``count * max_len - sum`` stays
    within ``max_waste * sum``; sequences are taken longest first, so similar lengths share a group."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    total = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= (1 + max_waste) * (total + lengths[i]):
            groups[-1].append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return groups


def _build_groups(cu_seqlens: torch.Tensor, max_waste: float) -> list[_Group]:
    bounds = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    groups = []
    for members in plan_groups(lengths, max_waste):
        members.sort()
        n, max_len = len(members), max(lengths[i] for i in members)
        first, last = bounds[members[0]], bounds[members[-1] + 1]
        if all(lengths[i] == max_len for i in members) and members[-1] - members[0] == n - 1:
            tokens = torch.arange(first, last)
            groups.append(_Group(n, max_len, tokens, start=first))
            continue
        starts = torch.tensor([bounds[i] for i in members])
        lens = torch.tensor([lengths[i] for i in members])
        pos = torch.arange(max_len)
        keep = pos[None, :] < lens[:, None]  # (n, max_len)
        gather = starts[:, None] + torch.minimum(pos[None, :], lens[:, None] - 1)
        groups.append(_Group(n, max_len, gather[keep], gather=gather.reshape(-1), key_mask=keep,
                             keep=keep.reshape(-1)))
    return groups


def _groups(cu_seqlens: torch.Tensor, max_waste: float) -> tuple[list[_Group], torch.Tensor | None]:
    """The plan for ``cu_seqlens``: the groups, and the permutation that puts the concatenated group outputs
    back in packed order (None when they already are). Remembered on the tensor, so every layer of one forward
    pass reuses it (one host read of ``cu_seqlens`` per forward pass)."""
    key = (tensor_version(cu_seqlens), max_waste)
    cached = getattr(cu_seqlens, "_bellm_cpu_groups", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    groups = _build_groups(cu_seqlens.cpu(), max_waste)
    order = torch.cat([g.tokens for g in groups]) if groups else torch.zeros(0, dtype=torch.long)
    identity = bool((order == torch.arange(order.numel())).all())
    plan = (groups, None if identity else torch.argsort(order))
    cu_seqlens._bellm_cpu_groups = (key, plan)
    return plan


def _eager_order(q, k, v, *, causal: bool, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """As :func:`_sdpa`, in transformers' eager attention's operation order (see ``EAGER_ORDER_MAX_LEN``)."""
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    group = qh.shape[1] // kh.shape[1]
    if group > 1:
        kh, vh = kh.repeat_interleave(group, dim=1), vh.repeat_interleave(group, dim=1)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    if mask is None and causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, vh).transpose(1, 2)


def _sdpa(q, k, v, *, causal: bool, scale: float, mask: torch.Tensor | None = None,
          eager_order: bool = False) -> torch.Tensor:
    """``q (B, S, H, D)``, ``k, v (B, S, Hkv, D)`` -> ``(B, S, H, D)``; ``mask`` bool (True = may attend),
    broadcastable to (B, 1, S, S), with the causal triangle already in it when given."""
    if eager_order and q.shape[1] <= EAGER_ORDER_MAX_LEN:
        return _eager_order(q, k, v, causal=causal, scale=scale, mask=mask)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        is_causal=causal and mask is None, scale=scale, enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def _group_attention(q, k, v, g: _Group, causal: bool, scale: float, eager_order: bool) -> torch.Tensor:
    """Attention of one group: ``(group tokens, heads, head_dim)`` in the order of ``g.tokens``."""
    heads, head_dim = q.shape[1:]
    if g.start is not None:
        end = g.start + g.count * g.max_len
        view = lambda x: x[g.start:end].view(g.count, g.max_len, *x.shape[1:])  # noqa: E731
        out = _sdpa(view(q), view(k), view(v), causal=causal, scale=scale, eager_order=eager_order)
        return out.reshape(-1, heads, head_dim)
    take = lambda x: x.index_select(0, g.gather).view(g.count, g.max_len, *x.shape[1:])  # noqa: E731
    # right padding: a causal query never reaches its pads; a bidirectional one needs the key mask
    mask = None if causal else g.key_mask[:, None, None, :]
    out = _sdpa(take(q), take(k), take(v), causal=causal, scale=scale, mask=mask, eager_order=eager_order)
    return out.reshape(-1, heads, head_dim)[g.keep]


def _longest(cu_seqlens: torch.Tensor) -> int:
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0


def _packed(q, k, v, cu_seqlens: torch.Tensor, causal: bool, scale: float, eager_order: bool) -> torch.Tensor:
    # eager order pads every sequence to the longest, as an eager model's padded batch does, so that even the
    # summation lengths match it; otherwise groups of similar lengths
    one_group = eager_order and _longest(cu_seqlens) <= EAGER_ORDER_MAX_LEN
    groups, order = _groups(cu_seqlens, math.inf if one_group else MAX_PAD_WASTE)
    if not groups:  # no token at all: an empty output, still connected to q, k and v for autograd
        return q.new_zeros(q.shape) + 0 * (q.sum() + k.sum() + v.sum())
    outs = [_group_attention(q, k, v, g, causal, scale, eager_order) for g in groups]
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out if order is None else out.index_select(0, order)


# --------------------------------------------------------------------------------------------------------
# padded layout
# --------------------------------------------------------------------------------------------------------


def _padded(q, k, v, key_mask: torch.Tensor | None, causal: bool, scale: float, eager_order: bool) -> torch.Tensor:
    if key_mask is None or bool(key_mask.all()):
        return _sdpa(q, k, v, causal=causal, scale=scale, eager_order=eager_order)
    batch, seqlen = key_mask.shape
    counts = key_mask.sum(dim=1)
    right_padded = bool((key_mask == (torch.arange(seqlen) < counts[:, None])).all())
    if right_padded and causal:
        mask = None  # real queries never see a later (pad) key
    elif right_padded:
        mask = (key_mask | (counts == 0)[:, None])[:, None, None, :]  # an empty row sees everything (zeroed)
    else:
        allowed = key_mask[:, None, :].expand(batch, seqlen, seqlen)
        if causal:
            allowed = allowed & torch.ones(seqlen, seqlen, dtype=torch.bool).tril()
        mask = (allowed | ~allowed.any(dim=-1, keepdim=True))[:, None]  # (B, 1, S, S)
    out = _sdpa(q, k, v, causal=causal, scale=scale, mask=mask, eager_order=eager_order)
    return out * key_mask[:, :, None, None].to(out.dtype)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    cu_seqlens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    eager_order: bool = False,
) -> torch.Tensor:
    """Softmax attention on CPU tensors, differentiable through PyTorch's autograd.

    Shapes, masks and results as :func:`bellm_kernels.reference.attention`; ``attention_mask`` is bool (or
    None) and ``scale`` a float. ``eager_order`` (set when gradients are wanted): batches of at most
    ``EAGER_ORDER_MAX_LEN`` positions run in eager attention's operation order. Inputs are not checked here:
    :func:`bellm_kernels.attention` checks first. Returns a tensor shaped like ``q`` in ``q.dtype`` (a strided
    view of SDPA's output where no copy is needed).
    """
    if cu_seqlens is not None:
        return _packed(q, k, v, cu_seqlens, causal, scale, eager_order)
    return _padded(q, k, v, attention_mask, causal, scale, eager_order)


# --------------------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------------------


def pool(
    hidden: torch.Tensor,
    *,
    mode: str,
    attention_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    normalize: bool = False,
    pool_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pooling on CPU tensors, differentiable: as :func:`bellm_kernels.reference.pool`, without the padded copy.

    ``hidden`` is padded ``(batch, seqlen, dim)`` with a bool ``attention_mask`` or packed ``(total, dim)`` with
    ``cu_seqlens``; ``pool_mask`` (bool, same token layout) narrows the pooled tokens. Returns
    ``(num_seqs, dim)`` in ``hidden.dtype``; a sequence with no pooled token gives zeros.
    """
    dim = hidden.shape[-1]
    if cu_seqlens is not None:
        num_seqs = cu_seqlens.numel() - 1
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        seq = torch.repeat_interleave(torch.arange(num_seqs), lengths, output_size=hidden.shape[0])
        keep = pool_mask
        tokens = hidden
    else:
        num_seqs, seqlen = attention_mask.shape
        seq = torch.arange(num_seqs).repeat_interleave(seqlen)
        keep = attention_mask if pool_mask is None else attention_mask & pool_mask
        keep = keep.reshape(-1)
        tokens = hidden.reshape(-1, dim)
    total = tokens.shape[0]
    keep = torch.ones(total, dtype=torch.bool) if keep is None else keep
    count = torch.zeros(num_seqs, dtype=torch.long).index_add_(0, seq, keep.long())
    if mode == "mean":
        h = tokens.float() * keep[:, None]
        out = h.new_zeros(num_seqs, dim).index_add(0, seq, h) / count.clamp_min(1)[:, None]
    else:
        position = torch.arange(total)
        if mode == "last":
            idx = torch.full((num_seqs,), -1).scatter_reduce(0, seq, torch.where(keep, position, -1), "amax")
        else:
            idx = torch.full((num_seqs,), total).scatter_reduce(0, seq, torch.where(keep, position, total), "amin")
        idx = idx.clamp(0, max(total - 1, 0))
        out = tokens.float().index_select(0, idx) if total else tokens.new_zeros(num_seqs, dim).float()
        out = out * (count > 0)[:, None]
    if normalize:
        out = out / torch.linalg.vector_norm(out, dim=-1, keepdim=True).clamp_min(1e-12)
    return out.to(hidden.dtype)
