"""Token-budget packing: turn tokenized sentences into packed varlen batches (no padding tokens anywhere).

A packed batch is what the patched model consumes on the hot path (see :mod:`bellm.encoder`):
``input_ids (1, total)``, ``position_ids (1, total)`` restarting at 0 for each sentence, and flash-attn style
``cu_seq_lens_q/k`` (int32, ``(num_seqs + 1,)``) with ``max_length_q/k``. Encoding and training both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["PackedBatch", "pack", "plan_batches"]


@dataclass
class PackedBatch:
    """One packed micro-batch.

    ``input_ids``/``position_ids``: ``(1, total)`` long; ``cu_seqlens``: int32 ``(num_seqs + 1,)``;
    ``max_seqlen``: the longest sequence; ``indices``: for each packed sequence, its index in the caller's list.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    indices: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            self.cu_seqlens.to(device, non_blocking=True),
            self.max_seqlen,
            self.indices,
        )

    def model_kwargs(self) -> dict:
        """Keyword arguments for a model patched with :func:`bellm.patch` (transformers' packed-sequence kwargs)."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_seqlen,
            "max_length_k": self.max_seqlen,
        }


def pack(token_ids: Sequence[Sequence[int]], indices: Sequence[int] | None = None) -> PackedBatch:
    """Concatenate ``token_ids`` (one list per sequence, each non-empty) into one :class:`PackedBatch`."""
    if indices is None:
        indices = range(len(token_ids))
    chosen = [list(token_ids[i]) for i in indices]
    empty = [i for i, ids in zip(indices, chosen) if len(ids) == 0]
    if empty:
        raise ValueError(f"sequence {empty[0]} has no tokens; every packed sequence needs at least one token")
    lengths = [len(ids) for ids in chosen]
    flat = [t for ids in chosen for t in ids]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    position_ids = [p for n in lengths for p in range(n)]
    return PackedBatch(
        input_ids=torch.tensor([flat], dtype=torch.long),
        position_ids=torch.tensor([position_ids], dtype=torch.long),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        max_seqlen=max(lengths, default=0),
        indices=list(indices),
    )


def plan_batches(
    lengths: Sequence[int], max_tokens: int, max_batch_size: int | None = None, *, sort: bool = True
) -> list[list[int]]:
    """Group sequence indices into batches of at most ``max_tokens`` tokens (and ``max_batch_size`` sequences).

    With ``sort`` the sequences are taken longest first, so batches hold similar lengths and the longest batch runs
    first (an out-of-memory error shows up at once). A single sequence longer than ``max_tokens`` gets a batch of
    its own. Returns lists of indices into ``lengths``; every index appears exactly once.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if sort else list(range(len(lengths)))
    batches: list[list[int]] = []
    current: list[int] = []
    current_tokens = 0
    for i in order:
        n = lengths[i]
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (current_tokens + n > max_tokens or full):
            batches.append(current)
            current, current_tokens = [], 0
        current.append(i)
        current_tokens += n
    if current:
        batches.append(current)
    return batches
