"""Plain-PyTorch twins of the Triton ops: same signatures, float32 maths, explicit masks.

These are the ground truth for the tests (CPU tensors run :mod:`bellm_kernels.cpu` instead). They are written to be
obviously right (packed inputs are scattered into a padded batch once, so the maths is batched).

Layouts (as flash-attn / fla):

- padded: ``q (batch, seqlen, heads, head_dim)``, ``k, v (batch, seqlen, kv_heads, head_dim)`` and
  ``attention_mask (batch, seqlen)`` with 1 = real token (left, right or mixed padding);
- packed: ``q (total_tokens, heads, head_dim)``, ``k, v (total_tokens, kv_heads, head_dim)`` and int32
  ``cu_seqlens (num_seqs + 1,)``.
"""

from __future__ import annotations

import torch

__all__ = ["attention", "pool", "POOL_MODES"]

POOL_MODES = ("mean", "last", "first")


def _seqlens(cu_seqlens: torch.Tensor) -> list[int]:
    values = cu_seqlens.tolist()
    return [b - a for a, b in zip(values[:-1], values[1:])]


def _packed_index(cu_seqlens: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where packed tokens go in a padded ``(num_seqs, max_len)`` batch.

    Returns ``(token_mask (num_seqs, max_len) bool, flat_index (total,))``: ``flat_index[t]`` is the position of
    packed token t in the flattened ``(num_seqs * max_len)`` padded layout.
    """
    lengths = _seqlens(cu_seqlens)
    max_len = max(lengths, default=0)
    lengths_t = torch.tensor(lengths, device=device, dtype=torch.long)
    token_mask = torch.arange(max_len, device=device)[None, :] < lengths_t[:, None]
    return token_mask, token_mask.reshape(-1).nonzero().squeeze(-1)


def _scatter_padded(x: torch.Tensor, token_mask: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """Packed ``x (total, ...)`` -> padded ``(num_seqs, max_len, ...)`` with zeros at the pads."""
    padded = x.new_zeros((token_mask.numel(), *x.shape[1:])).index_copy(0, flat_index, x)
    return padded.reshape(*token_mask.shape, *x.shape[1:])


def _padded_attention(q, k, v, key_mask, causal: bool, scale: float) -> torch.Tensor:
    """q (B, S, H, D), k/v (B, S, Hkv, D), key_mask (B, S) bool -> (B, S, H, D) float32; pad rows are zero."""
    batch, seqlen, heads, _ = q.shape
    group = heads // k.shape[2]
    qf = q.float().transpose(1, 2)  # (B, H, S, D)
    kf = k.float().repeat_interleave(group, dim=2).transpose(1, 2)
    vf = v.float().repeat_interleave(group, dim=2).transpose(1, 2)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # (B, H, S, S)
    allowed = key_mask[:, None, None, :].expand(batch, 1, seqlen, seqlen)
    if causal:
        tril = torch.ones(seqlen, seqlen, dtype=torch.bool, device=q.device).tril()
        allowed = allowed & tril
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1)
    # A query row with no visible key (a padded row) gets a uniform distribution above; zero it and every pad row.
    row_valid = key_mask[:, None, :, None] & allowed.any(dim=-1, keepdim=True)
    probs = probs * row_valid
    return torch.matmul(probs, vf).transpose(1, 2)  # (B, S, H, D)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    attention_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Reference softmax attention, causal or bidirectional inside each sequence, with GQA.

    Padded keys are never attended and padded query rows return zeros; sequences in a packed batch never see each
    other; zero-length sequences contribute nothing. ``scale`` defaults to ``head_dim ** -0.5``. Returns a tensor
    shaped like ``q`` in ``q.dtype``. No input checks: :func:`bellm_kernels.attention` checks, then calls this.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if cu_seqlens is not None:
        token_mask, flat_index = _packed_index(cu_seqlens, q.device)
        qp, kp, vp = (_scatter_padded(x, token_mask, flat_index) for x in (q, k, v))
        out = _padded_attention(qp, kp, vp, token_mask, causal, scale)
        out = out.reshape(-1, *out.shape[2:]).index_select(0, flat_index)
        return out.to(q.dtype)
    if attention_mask is None:
        attention_mask = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
    return _padded_attention(q, k, v, attention_mask.bool(), causal, scale).to(q.dtype)


def pool(
    hidden: torch.Tensor,
    *,
    mode: str,
    attention_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    normalize: bool = False,
    pool_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference pooling of ``hidden`` into one vector per sequence, ``(num_seqs, dim)`` in ``hidden.dtype``.

    The pooled tokens of a sequence are its real tokens (``attention_mask``, or the ``cu_seqlens`` span) that are also
    in ``pool_mask`` when given. ``mean`` averages them, ``last``/``first`` take the last/first of them whatever the
    padding side. A sequence with no pooled token gives zeros. ``normalize`` divides by ``max(||x||_2, 1e-12)``.
    """
    if cu_seqlens is not None:
        token_mask, flat_index = _packed_index(cu_seqlens, hidden.device)
        padded = _scatter_padded(hidden, token_mask, flat_index)
        if pool_mask is not None:
            pm = torch.zeros(token_mask.numel(), dtype=torch.bool, device=hidden.device)
            pm[flat_index] = pool_mask.bool()
            token_mask = token_mask & pm.reshape(token_mask.shape)
        return pool(padded, mode=mode, attention_mask=token_mask, normalize=normalize)
    if attention_mask is None:
        raise ValueError("pass attention_mask (padded layout) or cu_seqlens (packed layout)")
    keep = attention_mask.bool()
    if pool_mask is not None:
        keep = keep & pool_mask.bool()
    h = hidden.float()
    batch, seqlen, _ = h.shape
    count = keep.sum(dim=1)  # (B,)
    if mode == "mean":
        out = (h * keep[..., None]).sum(dim=1) / count.clamp_min(1)[:, None]
    elif mode in ("last", "first") and seqlen == 0:
        out = h.new_zeros(batch, h.shape[-1])
    elif mode in ("last", "first"):
        positions = torch.arange(seqlen, device=h.device).expand(batch, seqlen)
        if mode == "last":
            idx = torch.where(keep, positions, -1).amax(dim=1).clamp_min(0)
        else:
            idx = torch.where(keep, positions, seqlen).amin(dim=1).clamp_max(max(seqlen - 1, 0))
        out = h[torch.arange(batch, device=h.device), idx]
        out = out * (count > 0)[:, None]
    else:
        raise ValueError(f"unknown pooling mode {mode!r}; valid modes are {', '.join(POOL_MODES)}")
    if normalize:
        out = out / torch.linalg.vector_norm(out, dim=-1, keepdim=True).clamp_min(1e-12)
    return out.to(hidden.dtype)
