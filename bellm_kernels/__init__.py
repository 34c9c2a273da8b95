"""Triton kernels for decoder-LLM sentence encoders: attention (causal or bidirectional per call, padded or packed
varlen, GQA) and pooling (mean / last / first, fused L2 normalisation), each with autograd, registered as
``torch.library`` custom ops (``torch.ops.bellm.*``: ``torch.compile`` traces them without graph breaks). CPU
tensors run :mod:`bellm_kernels.cpu` (PyTorch SDPA); :mod:`bellm_kernels.reference` is the plain-PyTorch ground
truth of the tests. No transformers import here."""

from bellm_kernels import reference
from bellm_kernels.attention import attention
from bellm_kernels.pool import pool

__all__ = ["attention", "pool", "reference"]
