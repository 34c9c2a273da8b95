"""STUB (replaced by the Triton implementation): dispatches to the reference."""

from __future__ import annotations

import torch

from bellm_kernels import reference

__all__ = ["pool"]


def pool(hidden, *, mode, attention_mask=None, cu_seqlens=None, normalize=False, pool_mask=None) -> torch.Tensor:
    return reference.pool(
        hidden, mode=mode, attention_mask=attention_mask, cu_seqlens=cu_seqlens, normalize=normalize,
        pool_mask=pool_mask,
    )
