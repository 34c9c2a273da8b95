"""Benchmark: bellm_kernels.attention vs the attention peers, forward and forward+backward, plus a
correctness check.

Full run (CUDA, bfloat16, head_dim 128, causal and bidirectional):

- ``dense B8 S2048 H32`` with kv_heads 32 (MHA) and 8 (GQA), and ``dense B256 S64 H32`` (MHA): no padding;
- ``packed 64k tok``: 65,536 tokens in sequences of lengths uniform in 16..512, H32, kv_heads 8.

Peers, each in its native layout (layout changes happen outside the timing): SDPA with the flash, cuDNN and
efficient backends (``sdpa-flash`` etc.; for the packed case the batch is padded to the longest sequence with
a boolean mask, ``*-padded``, and flash, which takes no mask, is skipped), FlexAttention (``flex``, compiled;
its BlockMask is built once outside the timing and its build time is in ``note``), ``varlen_attn``
(``torch.nn.attention.varlen``, when present) and flash-attn (when importable). A peer that cannot run gives a
``skipped`` row with the reason.

``tflops`` counts useful work only: ``4 * H * D * sum(L_i ** 2)``, halved when causal, times 3.5 for fwd+bwd;
padded peers do more work than that, which is the point. Before timing, every ``bellm`` group is checked
against ``bellm_kernels.reference.attention`` (float32 maths) on the same inputs (a slice for the big shapes):
output and dq/dk/dv with one upstream grad; the maximum errors and PASS/FAIL are in the ``bellm`` rows'
``note``. A second check runs the packed shape in float16.

``BELLM_BENCH_ATTENTION_MASKS`` = ``bidir`` or ``causal`` runs only the cases with that masking (default
``both``; the float16 check is a causal case), so a time-boxed run can measure the two halves in separate
processes. ``smoke=True`` runs tiny float32 shapes on CPU in seconds (``bellm`` goes through the Triton interpreter when
``TRITON_INTERPRET=1``, otherwise the reference path) and never judges speed.

    python -m benchmarks.bench_attention [--smoke]
"""

from __future__ import annotations

import inspect
import os
import time

import torch
import torch.nn.functional as F

from bellm_kernels import attention, reference
from benchmarks._timing import measure, script_main

_ERRORS = (RuntimeError, NotImplementedError, TypeError, ValueError, AssertionError)
# (output, gradient) tolerances relative to max(1, max |reference|)
_TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (5e-3, 1e-2), torch.bfloat16: (2e-2, 5e-2)}


# ------------------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------------------


def _lengths_uniform(total: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    """Sequence lengths uniform in [lo, hi] that sum to exactly ``total`` (the last one is cut to fit)."""
    g = torch.Generator().manual_seed(seed)
    lengths, used = [], 0
    while used < total:
        n = min(int(torch.randint(lo, hi + 1, (1,), generator=g)), total - used)
        lengths.append(n)
        used += n
    return lengths


def _cu(lengths, device) -> torch.Tensor:
    values = [0]
    for n in lengths:
        values.append(values[-1] + n)
    return torch.tensor(values, dtype=torch.int32, device=device)


def _useful_flops(heads: int, head_dim: int, lengths, causal: bool) -> float:
    flops = 4.0 * heads * head_dim * sum(n * n for n in lengths)
    return flops / 2 if causal else flops


class Case:
    """One benchmark configuration and its random inputs, in every layout a peer needs."""

    def __init__(self, name, lengths, heads, kv_heads, head_dim, causal, dtype, device, packed, seed=0):
        self.name, self.lengths, self.heads = name, lengths, heads
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.causal, self.dtype, self.device, self.packed = causal, dtype, device, packed
        g = torch.Generator().manual_seed(seed)
        total = sum(lengths)
        make = lambda h: torch.randn(total, h, head_dim, generator=g).to(device=device, dtype=dtype)
        # packed (T, H, D) tensors; the dense cases view them as (B, S, H, D)
        self.q, self.k, self.v, self.do = make(heads), make(kv_heads), make(kv_heads), make(heads)
        self.cu = _cu(lengths, device)
        self.max_len = max(lengths)
        self.flops = _useful_flops(heads, head_dim, lengths, causal)

    @property
    def group(self) -> str:
        kind = "causal" if self.causal else "bidir"
        return f"attn {{}} {self.name} {kind} H{self.heads}/{self.kv_heads} D{self.head_dim}"

    def bshd(self, x: torch.Tensor) -> torch.Tensor:
        """Dense cases: (T, H, D) -> (B, S, H, D) view."""
        return x.view(len(self.lengths), self.max_len, *x.shape[1:])

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """Packed cases: (T, H, D) -> right-padded (B, S_max, H, D) with zeros."""
        out = x.new_zeros((len(self.lengths), self.max_len, *x.shape[1:]))
        out.view(-1, *x.shape[1:])[self.flat_index] = x
        return out

    @property
    def key_mask(self) -> torch.Tensor:
        pos = torch.arange(self.max_len, device=self.device)
        return pos[None, :] < torch.tensor(self.lengths, device=self.device)[:, None]

    @property
    def flat_index(self) -> torch.Tensor:
        return self.key_mask.reshape(-1).nonzero().squeeze(-1)

    def bellm(self, q, k, v):
        if self.packed:
            return attention(q, k, v, causal=self.causal, cu_seqlens=self.cu, max_seqlen=self.max_len)
        return attention(self.bshd(q), self.bshd(k), self.bshd(v), causal=self.causal)


# ------------------------------------------------------------------------------------------------------------
# correctness
# ------------------------------------------------------------------------------------------------------------


def _check(case: Case, max_tokens: int = 8192) -> str:
    """bellm vs the float32 reference on (a prefix of) the case: output and dq/dk/dv with one upstream
    grad."""
    n, used = 0, 0
    while n < len(case.lengths) and used + case.lengths[n] <= max_tokens:
        used += case.lengths[n]
        n += 1
    n, used = max(n, 1), max(used, case.lengths[0])
    sub = lambda x: x[:used]
    cu = _cu(case.lengths[:n], case.device)
    max_len = max(case.lengths[:n])

    def run(fn, dtype):
        leaves = [sub(x).detach().to(dtype).requires_grad_() for x in (case.q, case.k, case.v)]
        if case.packed:
            out = fn(*leaves, causal=case.causal, cu_seqlens=cu, max_seqlen=max_len)
        else:
            shape = lambda x: x.view(n, case.max_len, *x.shape[1:])
            out = fn(*map(shape, leaves), causal=case.causal).reshape(used, *leaves[0].shape[1:])
        grads = torch.autograd.grad(out, leaves, sub(case.do).to(dtype))
        return [out.detach(), *grads]

    got = run(attention, case.dtype)
    ref = run(reference.attention, torch.float32)
    tol_out, tol_grad = _TOL[case.dtype]
    errs, ok = [], True
    for name, a, b, tol in zip(("out", "dq", "dk", "dv"), got, ref, (tol_out, tol_grad, tol_grad, tol_grad)):
        err = (a.float() - b).abs().max().item()
        ok &= bool(torch.isfinite(a).all()) and err <= tol * max(1.0, b.abs().max().item())
        errs.append(f"{name} {err:.1e}")
    dtype = str(case.dtype).replace("torch.", "")
    return f"check {dtype} vs fp32 reference ({used} tok): {', '.join(errs)}: {'PASS' if ok else 'FAIL'}"


# ------------------------------------------------------------------------------------------------------------
# peers: each returns fn(q, k, v) -> out on leaves in its own layout, plus (leaves, upstream grad)
# ------------------------------------------------------------------------------------------------------------


def _sdpa_backend(name):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def _peer_sdpa(case: Case, backend: str | None):
    """SDPA on (B, H, S, D); packed cases are padded with a boolean mask."""
    from torch.nn.attention import sdpa_kernel

    gqa = case.heads != case.kv_heads
    if case.packed:
        to = lambda x: case.padded(x).transpose(1, 2).contiguous()
        allowed = case.key_mask[:, None, None, :]
        if case.causal:
            allowed = allowed & torch.ones(case.max_len, case.max_len, dtype=torch.bool,
                                           device=case.device).tril()
        mask, is_causal = allowed, False
    else:
        to = lambda x: case.bshd(x).transpose(1, 2).contiguous()
        mask, is_causal = None, case.causal
    kwargs = {"enable_gqa": True} if gqa else {}

    def fn(q, k, v):
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **kwargs)
        with sdpa_kernel(_sdpa_backend(backend)):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **kwargs)

    return fn, [to(case.q), to(case.k), to(case.v)], to(case.do)


def _peer_flex(case: Case):
    """Compiled FlexAttention on (B, H, S, D); the BlockMask is built here, once; returns its build time
    too."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # a fresh Dynamo cache per case: the cases' shapes and modes together exceed Dynamo's recompile limit,
    # past which flex_attention would silently run eagerly (materialised scores), not compiled
    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, dynamic=False)
    device = case.device
    t0 = time.perf_counter()
    if case.packed:
        lengths = torch.tensor(case.lengths, device=device)
        doc = torch.repeat_interleave(torch.arange(len(case.lengths), device=device), lengths)
        total = doc.numel()

        def mask_mod(b, h, q_idx, kv_idx):
            same = doc[q_idx] == doc[kv_idx]
            return same & (q_idx >= kv_idx) if case.causal else same

        # _compile avoids materialising the (T, T) mask where this torch supports it
        extra = {"_compile": True} if "_compile" in inspect.signature(create_block_mask).parameters else {}
        block_mask = create_block_mask(mask_mod, None, None, total, total, device=device, **extra)
        to = lambda x: x[None].transpose(1, 2).contiguous()
    else:
        if case.causal:
            block_mask = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None,
                                           case.max_len, case.max_len, device=device)
        else:
            block_mask = None
        to = lambda x: case.bshd(x).transpose(1, 2).contiguous()
    if device.type == "cuda":
        torch.cuda.synchronize()
    build_ms = (time.perf_counter() - t0) * 1000
    gqa = case.heads != case.kv_heads

    def fn(q, k, v):
        return compiled(q, k, v, block_mask=block_mask, enable_gqa=gqa)

    note = f"BlockMask build {build_ms:.1f} ms (outside timing)" if block_mask is not None else "no BlockMask"
    return fn, [to(case.q), to(case.k), to(case.v)], to(case.do), note


def _peer_varlen(case: Case):
    """torch.nn.attention.varlen.varlen_attn on (T, H, D) packed tensors."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs, note = {}, ""
    if "is_causal" in params:
        kwargs["is_causal"] = case.causal
    elif case.causal:
        kwargs["window_size"] = (-1, 0)
    k, v = case.k, case.v
    if case.heads != case.kv_heads:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            group = case.heads // case.kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            note = "kv heads repeated outside timing (no enable_gqa in this torch)"
    cu = case.cu

    def fn(q, k, v):
        return varlen_attn(q, k, v, cu, cu, case.max_len, case.max_len, **kwargs)

    return fn, [case.q, k, v], case.do, note


def _peer_flash_attn(case: Case):
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    if case.packed:
        def fn(q, k, v):
            return flash_attn_varlen_func(q, k, v, case.cu, case.cu, case.max_len, case.max_len,
                                          causal=case.causal)
        return fn, [case.q, case.k, case.v], case.do
    return (lambda q, k, v: flash_attn_func(q, k, v, causal=case.causal),
            [case.bshd(case.q), case.bshd(case.k), case.bshd(case.v)], case.bshd(case.do))


# ------------------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------------------


def _time_rows(case: Case, impl: str, fn, leaves, grad, note: str = "") -> list[dict]:
    """A fwd row and a fwd+bwd row for one implementation (skipped rows when it cannot run)."""
    rows, device = [], case.device
    fwd_group, bwd_group = case.group.format("fwd"), case.group.format("fwd+bwd")
    try:
        with torch.no_grad():
            out = fn(*leaves)  # also compiles / autotunes outside the timing
        if not torch.isfinite(out.float()).all():
            raise RuntimeError("non-finite output")

        def run_fwd():
            with torch.no_grad():
                fn(*leaves)

        timing = measure(run_fwd, device=device)
        rows.append({"group": fwd_group, "impl": impl, **timing,
                     "tflops": case.flops / (timing["median_ms"] * 1e-3) / 1e12, "note": note})
    except _ERRORS as exc:
        rows.append({"group": fwd_group, "impl": impl, "skipped": f"{type(exc).__name__}: {str(exc)[:160]}"})
    try:
        leaves = [x.detach().requires_grad_() for x in leaves]

        def run_bwd():
            torch.autograd.grad(fn(*leaves), leaves, grad)

        peak = None
        if device.type == "cuda":
            run_bwd()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run_bwd()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        timing = measure(run_bwd, device=device)
        row = {"group": bwd_group, "impl": impl, **timing,
               "tflops": 3.5 * case.flops / (timing["median_ms"] * 1e-3) / 1e12, "note": note}
        if peak is not None:
            row["peak_mem_mb"] = peak
        rows.append(row)
    except _ERRORS as exc:
        rows.append({"group": bwd_group, "impl": impl, "skipped": f"{type(exc).__name__}: {str(exc)[:160]}"})
    return rows


def _skip(case: Case, impl: str, reason: str) -> list[dict]:
    kinds = ("fwd", "fwd+bwd")
    return [{"group": case.group.format(kind), "impl": impl, "skipped": reason} for kind in kinds]


def _bench_case(case: Case, smoke: bool) -> list[dict]:
    rows = []
    try:
        check = _check(case)
    except _ERRORS as exc:
        check = f"check crashed: {type(exc).__name__}: {str(exc)[:120]}"
    rows += _time_rows(case, "bellm", case.bellm, [case.q, case.k, case.v],
                       case.do if case.packed else case.bshd(case.do), check)
    if smoke:
        fn, leaves, grad = _peer_sdpa(case, None)
        rows += _time_rows(case, "sdpa-math" + ("-padded" if case.packed else ""), fn, leaves, grad)
        for impl in ("flex", "varlen_attn", "flash-attn"):
            rows += _skip(case, impl, "smoke run: CUDA-only peer not run")
        return rows

    for backend in ("flash", "cudnn", "efficient"):
        impl = f"sdpa-{backend}" + ("-padded" if case.packed else "")
        if case.packed and backend == "flash":
            rows += _skip(case, impl, "the SDPA flash backend takes no attn_mask: no padded batches")
            continue
        try:
            fn, leaves, grad = _peer_sdpa(case, backend)
        except _ERRORS as exc:
            rows += _skip(case, impl, f"{type(exc).__name__}: {str(exc)[:160]}")
            continue
        rows += _time_rows(case, impl, fn, leaves, grad, "padded to the longest sequence, boolean mask"
                           if case.packed else "")
        del leaves, grad
        torch.cuda.empty_cache()

    try:
        fn, leaves, grad, note = _peer_flex(case)
        rows += _time_rows(case, "flex", fn, leaves, grad, note)
    except (*_ERRORS, ImportError) as exc:
        rows += _skip(case, "flex", f"{type(exc).__name__}: {str(exc)[:160]}")

    if case.packed:
        try:
            fn, leaves, grad, note = _peer_varlen(case)
            rows += _time_rows(case, "varlen_attn", fn, leaves, grad, note)
        except ImportError:
            rows += _skip(case, "varlen_attn", "torch.nn.attention.varlen.varlen_attn is not in this torch")
        except _ERRORS as exc:
            rows += _skip(case, "varlen_attn", f"{type(exc).__name__}: {str(exc)[:160]}")

    try:
        fn, leaves, grad = _peer_flash_attn(case)
        rows += _time_rows(case, "flash-attn", fn, leaves, grad)
    except ImportError:
        rows += _skip(case, "flash-attn", "flash-attn is not installed (optional peer)")
    except _ERRORS as exc:
        rows += _skip(case, "flash-attn", f"{type(exc).__name__}: {str(exc)[:160]}")
    return rows


def _causal_flags() -> tuple[bool, ...]:
    """The ``causal`` values to run, from ``BELLM_BENCH_ATTENTION_MASKS`` (bidir, causal or both)."""
    value = os.environ.get("BELLM_BENCH_ATTENTION_MASKS", "both").strip().lower()
    choices = {"both": (False, True), "bidir": (False,), "causal": (True,)}
    if value not in choices:
        raise ValueError(f"BELLM_BENCH_ATTENTION_MASKS={value!r}: use bidir, causal or both")
    return choices[value]


def _cases(smoke: bool) -> list[Case]:
    flags = _causal_flags()
    if smoke:  # bidirectional unless one masking is asked for
        dev, dt, causal = torch.device("cpu"), torch.float32, flags == (True,)
        return [
            Case("dense B2 S16", [16] * 2, 2, 1, 32, causal, dt, dev, packed=False),
            Case("packed 28 tok", [3, 9, 16], 2, 1, 32, causal, dt, dev, packed=True, seed=1),
        ]
    dev, dt = torch.device("cuda"), torch.bfloat16
    packed_lengths = _lengths_uniform(65536, 16, 512)
    cases = []
    for causal in flags:
        cases += [
            Case("dense B8 S2048", [2048] * 8, 32, 32, 128, causal, dt, dev, packed=False),
            Case("dense B8 S2048", [2048] * 8, 32, 8, 128, causal, dt, dev, packed=False),
            Case("dense B256 S64", [64] * 256, 32, 32, 128, causal, dt, dev, packed=False),
            Case("packed 64k tok", packed_lengths, 32, 8, 128, causal, dt, dev, packed=True),
        ]
    return cases


def collect(smoke: bool = False) -> list[dict]:
    if not smoke and not torch.cuda.is_available():
        return [{"group": "attn", "impl": "bellm", "skipped": "no CUDA device (run with --smoke on CPU)"}]
    rows = []
    for case in _cases(smoke):
        rows += _bench_case(case, smoke)
        if not smoke:
            torch.cuda.empty_cache()
    if not smoke and True in _causal_flags():
        # the float16 check on the packed shape (its timing is a bonus row)
        fp16 = Case("packed 64k tok", _lengths_uniform(65536, 16, 512), 32, 8, 128, True, torch.float16,
                    torch.device("cuda"), packed=True)
        fp16.name += " fp16"
        try:
            check = _check(fp16)
        except _ERRORS as exc:
            check = f"check crashed: {type(exc).__name__}: {str(exc)[:120]}"
        rows += _time_rows(fp16, "bellm", fp16.bellm, [fp16.q, fp16.k, fp16.v], fp16.do, check)
    if smoke:
        from bellm_kernels._checks import use_triton

        path = "interpreter" if use_triton(torch.zeros(1)) else "reference (TRITON_INTERPRET=1 for Triton)"
        for row in rows:
            if "skipped" not in row:
                prefix = f"smoke (CPU, tiny shapes; bellm = {path}): not a speed result."
                row["note"] = f"{prefix} {row.get('note', '')}".strip()
    return rows


def main() -> None:
    script_main(collect, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
