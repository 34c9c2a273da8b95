"""Input checks and the CPU/GPU dispatch rule shared by every op in ``bellm_kernels``.

Every check raises before any kernel launch, with a message that names the offending value and the fix.
Checks that only look at types and shapes run in the public functions (and so also while ``torch.compile``
traces them); checks that read tensor *values* (``cu_seqlens``) run inside the custom ops, where the data is
real.

Dispatch rule (the only place it is written down): a CUDA tensor runs the Triton kernel; a CPU tensor runs
the CPU path (:mod:`bellm_kernels.cpu`, built on PyTorch's SDPA), unless the environment variable
``TRITON_INTERPRET=1`` is set *at call time*, in which case the Triton kernel runs in Triton's interpreter
(used by the test-suite; it must also be set before triton is imported, which is Triton's own rule).
:mod:`bellm_kernels.reference` is never dispatched to: it is the ground truth of the tests.
"""

from __future__ import annotations

import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def use_triton(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` should go through the Triton kernel rather than the reference."""
    if tensor.is_cuda:
        return True
    return tensor.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_dtype(name: str, tensor: torch.Tensor, like: torch.Tensor | None = None) -> None:
    """Float16/bfloat16/float32 only; equal to ``like.dtype`` when given."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} has dtype {tensor.dtype}; supported are float16, bfloat16 and float32 "
            f"(cast with {name}.to(torch.bfloat16), for example)"
        )
    if like is not None and tensor.dtype != like.dtype:
        raise TypeError(
            f"{name} has dtype {tensor.dtype} but the other inputs are {like.dtype}; cast them to one dtype"
        )


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """All given (non-None) tensors on one device."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(
            f"inputs are on different devices ({listing}); move them to one device with .to(device)"
        )


def check_mask(name: str, mask: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """A ``(batch, seqlen)`` bool or 0/1 integer mask, 1 = real token; returns it as bool."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 2 or tuple(mask.shape) != (batch, seqlen):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}; expected (batch, seqlen) = ({batch}, {seqlen}), "
            "1 for real tokens and 0 for padding"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(
            f"{name} has dtype {mask.dtype}; pass a bool or 0/1 integer mask (additive float masks are not accepted)"
        )
    return mask != 0


def tensor_version(tensor: torch.Tensor) -> int:
    """``tensor._version`` (bumped by every in-place write), or -1 for an inference-mode tensor, which has none.

    Inference tensors can only be written in place inside ``torch.inference_mode()``; caches keyed on this
    value treat such a tensor as unchanged after its first use.
    """
    return -1 if tensor.is_inference() else tensor._version


def check_cu_seqlens(cu_seqlens: torch.Tensor, total_tokens: int, max_seqlen: int | None = None) -> None:
    """Validate flash-attn style ``cu_seqlens``: int32, 1-D, ``[0, ..., total_tokens]``, non-decreasing.

    Both halves: :func:`check_cu_seqlens_meta` (no data read) then :func:`check_cu_seqlens_values`.
    """
    check_cu_seqlens_meta(cu_seqlens, max_seqlen)
    check_cu_seqlens_values(cu_seqlens, total_tokens, max_seqlen)


def check_cu_seqlens_meta(cu_seqlens: torch.Tensor, max_seqlen: int | None = None) -> None:
    """Type, dtype and rank of ``cu_seqlens`` and the type of ``max_seqlen``; reads no tensor data."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be an int32 torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(
            f"cu_seqlens has dtype {cu_seqlens.dtype}; it must be int32 (use cu_seqlens.to(torch.int32))"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(
            f"cu_seqlens has shape {tuple(cu_seqlens.shape)}; expected 1-D (num_seqs + 1,) starting at 0"
        )
    if max_seqlen is not None and (not isinstance(max_seqlen, int) or isinstance(max_seqlen, bool)):
        raise TypeError(f"max_seqlen must be a Python int, got {max_seqlen!r}")


def check_cu_seqlens_values(cu_seqlens: torch.Tensor, total_tokens: int, max_seqlen: int | None = None) -> None:
    """The values of ``cu_seqlens``: start at 0, non-decreasing, end at ``total_tokens``; ``max_seqlen``, when
    given, at least the longest sequence.

    Values are read once per tensor version: the first call with a given ``cu_seqlens`` tensor pays one small
    device-to-host copy; later calls with the same, unmodified tensor (every layer of one forward pass) skip it,
    so the hot path has no host synchronisation. The check result is remembered on the tensor itself.
    """
    key = (tensor_version(cu_seqlens), total_tokens, max_seqlen)
    if getattr(cu_seqlens, "_bellm_checked", None) == key:
        return
    values = cu_seqlens.tolist()
    if values[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got cu_seqlens[0] = {values[0]}")
    lengths = [b - a for a, b in zip(values[:-1], values[1:])]
    bad = [i for i, n in enumerate(lengths) if n < 0]
    if bad:
        i = bad[0]
        raise ValueError(
            f"cu_seqlens must be non-decreasing, but cu_seqlens[{i + 1}] = {values[i + 1]} < "
            f"cu_seqlens[{i}] = {values[i]}"
        )
    if values[-1] != total_tokens:
        raise ValueError(
            f"cu_seqlens[-1] = {values[-1]} but the packed tensors hold {total_tokens} tokens; "
            "the last entry must equal total_tokens"
        )
    longest = max(lengths, default=0)
    if max_seqlen is not None and max_seqlen < longest:
        raise ValueError(
            f"max_seqlen = {max_seqlen} is smaller than the longest sequence in cu_seqlens ({longest}); "
            "pass max_seqlen = max(cu_seqlens[1:] - cu_seqlens[:-1])"
        )
    cu_seqlens._bellm_checked = key
