"""Triton kernels for decoder-LLM sentence encoders: attention (causal or bidirectional per call, padded or packed
varlen, GQA) and pooling (mean / last / first, fused L2 normalisation), each with autograd and a plain-PyTorch
reference in :mod:`bellm_kernels.reference` (also the CPU path). No transformers import here."""

from bellm_kernels import reference
from bellm_kernels.attention import attention
from bellm_kernels.pool import pool

__all__ = ["attention", "pool", "reference"]
