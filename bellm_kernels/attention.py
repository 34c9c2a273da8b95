"""STUB (replaced by the Triton implementation): dispatches to the reference."""

from __future__ import annotations

import torch

from bellm_kernels import reference

__all__ = ["attention"]


def attention(q, k, v, *, causal, cu_seqlens=None, max_seqlen=None, attention_mask=None, scale=None) -> torch.Tensor:
    return reference.attention(
        q, k, v, causal=causal, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, attention_mask=attention_mask, scale=scale
    )
