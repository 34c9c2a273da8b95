"""The launch configurations shipped for every Triton kernel of the package: the one source of truth.

:func:`autotune_configs` gives the candidates the CUDA autotuner tries for one kernel, head_dim (or hidden size),
dtype and compute capability; the launchers in :mod:`bellm_kernels.attention` and :mod:`bellm_kernels.pool` and the
offline compile report (:mod:`bellm_kernels.compile_report`) all read them from here. The interpreter (CPU tests)
uses :data:`INTERPRETER_BLOCKS` instead.

The candidates aim at cubins that need no local memory (no register spills) on sm80 and sm90 for bf16 and
fp16 in every layout, causal or not. ``python -m bellm_kernels.compile_report`` shows what the compiler makes of
each (KERNELS.md); the CI gate (tests/kernels/test_compile_gate.py) fails on any spill in the matrix it covers,
under each Triton version CI installs. Tiles are keyed on the padded head_dim (and whether head_dim is a power of
two) and the architecture family only, never on sequence lengths or the Triton version.
"""

from __future__ import annotations

import torch
import triton

__all__ = ["KERNELS", "INTERPRETER_BLOCKS", "autotune_configs", "padded_head_dim"]

# every Triton kernel of the package, by the name the report and the docs use
KERNELS = (
    "attn_fwd",
    "attn_bwd_preprocess",
    "attn_bwd_dkdv",
    "attn_bwd_dq",
    "pool_fwd",
    "pool_bwd",
    "pool_l2norm_fwd",
    "pool_l2norm_bwd",
)

# (BLOCK_M, BLOCK_N) for the interpreter: unequal on purpose, so the block logic is exercised
INTERPRETER_BLOCKS = {
    "attn_fwd": (32, 16),
    "attn_bwd_dkdv": (16, 32),
    "attn_bwd_dq": (32, 16),
    "attn_bwd_preprocess": (32, 0),
}

# shared memory per block (KiB) by compute capability; unknown devices get the smallest
_SMEM_KIB = {(8, 0): 163, (8, 7): 163, (9, 0): 227, (10, 0): 227}

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per attention kernel, architecture family and padded head_dim.
# "sm90": Hopper and later datacenter parts (wgmma); "sm80": everything else (mma.sync, which keeps both dot
# operands in registers: smaller tiles). fwd / dq: BLOCK_M query rows are held with a [BLOCK_M, BLOCK_D] float32
# accumulator, BLOCK_N keys stream; dkdv: BLOCK_N keys are held with two [BLOCK_N, BLOCK_D] float32 accumulators,
# BLOCK_M query rows stream. 128-row tiles get 8 warps; at head_dim 256 only small tiles fit the registers.
_ATTN_TILES: dict[tuple[str, str, int], list[tuple[int, int, int, int]]] = {
    ("attn_fwd", "sm90", 64): [(128, 64, 8, 3), (64, 64, 4, 3)],
    ("attn_fwd", "sm90", 128): [(128, 64, 8, 3), (64, 32, 4, 3)],
    ("attn_fwd", "sm90", 256): [(64, 32, 8, 2), (32, 32, 4, 2)],
    ("attn_fwd", "sm80", 64): [(64, 64, 4, 3), (64, 32, 4, 3)],
    ("attn_fwd", "sm80", 128): [(64, 32, 4, 3), (32, 32, 4, 3)],
    ("attn_fwd", "sm80", 256): [(32, 32, 4, 2), (64, 32, 8, 2)],
    # dkdv on sm90: BLOCK_N 64 per warpgroup makes the key-side dots wgmma (4 warps: 64, 8 warps: 128 keys)
    ("attn_bwd_dkdv", "sm90", 64): [(16, 64, 4, 3), (16, 128, 8, 3)],
    ("attn_bwd_dkdv", "sm90", 128): [(16, 128, 8, 2), (16, 32, 4, 2)],
    ("attn_bwd_dkdv", "sm90", 256): [(16, 32, 8, 1), (16, 32, 4, 1)],
    ("attn_bwd_dkdv", "sm80", 64): [(16, 64, 4, 3)],
    ("attn_bwd_dkdv", "sm80", 128): [(16, 32, 4, 2), (16, 64, 8, 2), (32, 32, 8, 2)],
    ("attn_bwd_dkdv", "sm80", 256): [(16, 32, 8, 1)],
    ("attn_bwd_dq", "sm90", 64): [(128, 32, 8, 3), (64, 32, 4, 3)],
    ("attn_bwd_dq", "sm90", 128): [(64, 32, 4, 3), (128, 32, 8, 2), (64, 16, 4, 3)],
    ("attn_bwd_dq", "sm90", 256): [(32, 32, 4, 2), (64, 16, 8, 2)],
    ("attn_bwd_dq", "sm80", 64): [(64, 32, 4, 3)],
    ("attn_bwd_dq", "sm80", 128): [(64, 32, 4, 2), (32, 32, 4, 2), (64, 16, 4, 3)],
    ("attn_bwd_dq", "sm80", 256): [(32, 32, 8, 2)],
}
# head_dim below its padded BLOCK_D (80, 96 -> 128: EVEN_D is false) masks every head_dim column of every load, which
# costs registers the power-of-two head dims do not pay: where the tiles above spill for it, these replace them (the
# kernels are the same): dQ on sm80 with 4 warps at 64 rows; dK/dV on sm90, where 16x128 (8 warps) spills under
# Triton 3.6 and 16x32 (4 warps) under 3.9, while 8 warps on 32 keys compile clean under both.
_ATTN_TILES_UNEVEN: dict[tuple[str, str, int], list[tuple[int, int, int, int]]] = {
    ("attn_bwd_dq", "sm80", 128): [(64, 32, 8, 2), (32, 32, 4, 2)],
    ("attn_bwd_dkdv", "sm90", 128): [(32, 32, 8, 2), (16, 32, 8, 2)],
}


def padded_head_dim(head_dim: int) -> int:
    """BLOCK_D: the next power of two, at least 16."""
    return max(16, triton.next_power_of_2(head_dim))


def _family(capability: tuple[int, int]) -> str:
    return "sm90" if capability[0] in (9, 10) else "sm80"


def _smem_bytes(kernel: str, block_m: int, block_n: int, block_d: int, stages: int, elem: int) -> int:
    """Rough shared-memory need: resident dot operands plus (stages - 1) buffers of the streamed pair (matches
    what Triton allocates for sm90 to within ~30 %)."""
    buffers = max(stages - 1, 1)
    if kernel == "attn_fwd":  # q lives in registers; k and v stream
        return buffers * 2 * block_n * block_d * elem
    if kernel == "attn_bwd_dkdv":  # k, v resident; q, dO stream
        return (2 * block_n + buffers * 2 * block_m) * block_d * elem
    return (2 * block_m + buffers * 2 * block_n) * block_d * elem  # dq: q, dO resident; k, v stream


def _attention_configs(kernel, head_dim, elem, capability) -> list[triton.Config]:
    family, block_d = _family(capability), padded_head_dim(head_dim)
    key = (kernel, family, min(max(block_d, 64), 256))
    tiles = _ATTN_TILES_UNEVEN.get(key, _ATTN_TILES[key]) if head_dim != block_d else _ATTN_TILES[key]
    budget = _SMEM_KIB.get(tuple(capability), 99) * 1024
    configs, seen = [], set()
    for bm, bn, warps, stages in tiles:
        # fp32 operands double the tiles: drop the largest ones
        if elem == 4 and bm * bn > 64 * 64:
            continue
        while stages > 1 and _smem_bytes(kernel, bm, bn, block_d, stages, elem) > budget:
            stages -= 1
        if _smem_bytes(kernel, bm, bn, block_d, stages, elem) > budget or (bm, bn, warps, stages) in seen:
            continue
        seen.add((bm, bn, warps, stages))
        configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages))
    if not configs:
        configs = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return configs


# pooling: (BLOCK_T, BLOCK_D, num_warps); memory-bound, the same for every dtype and capability
_POOL_TILES = [(16, 256, 4), (32, 256, 8)]


def autotune_configs(
    kernel: str, dim: int, dtype: torch.dtype, capability: tuple[int, int]
) -> list[triton.Config]:
    """The launch configurations shipped for one kernel.

    Args:
        kernel: one of :data:`KERNELS`.
        dim: head_dim for the attention kernels (16..256); the hidden size for the pooling kernels (only the
            L2-norm kernels depend on it).
        dtype: the dtype of the kernel's inputs (float16, bfloat16 or float32).
        capability: CUDA compute capability ``(major, minor)``.

    Returns:
        ``triton.Config`` objects (meta-parameters, ``num_warps``, ``num_stages``); the autotuner tries them all,
        a kernel with a single config is launched with it directly.

    Raises:
        ValueError: an unknown kernel name.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
    elem = torch.empty((), dtype=dtype, device="meta").element_size()
    if kernel == "attn_bwd_preprocess":
        block_d = padded_head_dim(dim)
        return [triton.Config({"BLOCK_M": max(16, min(128, 8192 // block_d))}, num_warps=4, num_stages=1)]
    if kernel.startswith("attn_"):
        return _attention_configs(kernel, dim, elem, capability)
    if kernel in ("pool_fwd", "pool_bwd"):
        return [triton.Config({"BLOCK_T": bt, "BLOCK_D": bd}, num_warps=w) for bt, bd, w in _POOL_TILES]
    # L2 norm over one row of `dim` floats: one block covers up to 4096 of them per step
    block = min(triton.next_power_of_2(max(dim, 1)), 4096)
    return [triton.Config({"BLOCK_D": block}, num_warps=8 if block >= 2048 else 4, num_stages=1)]
