"""Benchmark: bellm_kernels.pool vs plain-PyTorch pooling, forward and forward+backward.

Peers:
- ``st-masked-mean``: the padded masked mean sentence-transformers' ``Pooling`` layer computes
  (mask expanded to the hidden shape, multiply, sum, divide by the clamped token count);
- ``index_add``: packed mean with ``index_add_`` over per-token sequence ids into a float32 buffer;
- ``segment_reduce``: packed mean with ``torch.segment_reduce`` (skipped where a build lacks it for a dtype);
- ``index_select``: packed last-token pooling as TEI does it, ``hidden[cu_seqlens[1:] - 1]``.

Full run (CUDA): 64k tokens x dim 4096 in bfloat16, padded ``(64, 1024, 4096)`` with every token real and
packed ``(65536, 4096)`` with 128 random-length sequences. ``gbps`` counts the bytes the op must move
(forward: read hidden once, or only the selected rows for last; backward: write grad_hidden once; the small
pooled vectors are ignored) and ``note`` gives it as a percentage of the device-to-device copy bandwidth
(read + write) measured in the same run; the target is >= 85 %. ``smoke=True`` runs tiny shapes on CPU in
seconds (there ``bellm`` is the reference path) and never judges speed.

    python -m benchmarks.bench_pool [--smoke]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bellm_kernels import pool
from benchmarks._timing import measure, script_main


def _st_masked_mean(hidden, mask, normalize=False):
    expanded = mask.unsqueeze(-1).expand(hidden.size()).to(hidden.dtype)
    out = torch.sum(hidden * expanded, 1) / torch.clamp(expanded.sum(1), min=1e-9)
    return F.normalize(out, dim=-1) if normalize else out


def _index_add_mean(hidden, seg_ids, counts, normalize=False):
    out = hidden.new_zeros((counts.numel(), hidden.shape[1]), dtype=torch.float32)
    out.index_add_(0, seg_ids, hidden.float())
    out = out / counts.clamp_min(1)[:, None]
    return (F.normalize(out, dim=-1) if normalize else out).to(hidden.dtype)


def _segment_reduce_mean(hidden, lengths):
    return torch.segment_reduce(hidden, "mean", lengths=lengths, axis=0, unsafe=True)


def _index_select_last(hidden, cu_seqlens):
    return hidden.index_select(0, (cu_seqlens[1:] - 1).long())


def _shapes(smoke: bool):
    if smoke:
        return {"device": "cpu", "dtype": torch.float32, "batch": 4, "seqlen": 16, "dim": 32, "num_seqs": 4}
    return {"device": "cuda", "dtype": torch.bfloat16, "batch": 64, "seqlen": 1024, "dim": 4096,
            "num_seqs": 128}


def _random_cu_seqlens(total: int, num_seqs: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    cuts = torch.randperm(total - 1, generator=g)[: num_seqs - 1].add(1).sort().values
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([total])]).to(device=device, dtype=torch.int32)


def _row(group, impl, fn, device, bytes_moved, copy_gbps, peak=False):
    try:
        if peak and torch.device(device).type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak_mb = None
        timing = measure(fn, device=device)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        return {"group": group, "impl": impl, "skipped": f"{type(exc).__name__}: {str(exc)[:120]}"}
    row = {"group": group, "impl": impl, **timing}
    if bytes_moved:
        row["gbps"] = bytes_moved / (timing["median_ms"] * 1e-3) / 1e9
        if copy_gbps:
            row["note"] = f"{100 * row['gbps'] / copy_gbps:.0f}% of copy bandwidth"
    if peak_mb is not None:
        row["peak_mem_mb"] = peak_mb
    return row


def collect(smoke: bool = False) -> list[dict]:
    s = _shapes(smoke)
    if not smoke and not torch.cuda.is_available():
        return [{"group": "pool", "impl": "bellm", "skipped": "no CUDA device (run with --smoke on CPU)"}]
    device, dtype, dim = s["device"], s["dtype"], s["dim"]
    batch, seqlen = s["batch"], s["seqlen"]
    total = batch * seqlen
    elt = torch.tensor([], dtype=dtype).element_size()
    nbytes = total * dim * elt
    torch.manual_seed(0)
    rows = []

    # the reference point: device copy of the same tensor (read + write)
    src = torch.randn(total, dim, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    copy = _row("copy", "torch.copy_", lambda: dst.copy_(src), device, 2 * nbytes, None)
    copy_gbps = None if smoke else copy.get("gbps")
    rows.append(copy)

    padded = src.view(batch, seqlen, dim)
    mask = torch.ones(batch, seqlen, dtype=torch.bool, device=device)
    packed = src
    cu = _random_cu_seqlens(total, s["num_seqs"], device)
    lengths = (cu[1:] - cu[:-1]).long()
    seg_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    counts = lengths.float()

    def fwd(f):
        def run():
            with torch.no_grad():
                f(None)
        return run

    def fwd_bwd(f, leaf):
        # one upstream grad, made once; autograd.grad avoids accumulating into .grad
        out_shape = f(leaf).shape
        grad = torch.randn(out_shape, device=device, dtype=dtype)

        def run():
            torch.autograd.grad(f(leaf), leaf, grad)
        return run

    padded_leaf = padded.detach().clone().requires_grad_()
    packed_leaf = packed.detach().clone().requires_grad_()

    cases = [
        ("mean padded", "bellm", lambda h: pool(padded if h is None else h, mode="mean", attention_mask=mask),
         padded_leaf),
        ("mean padded", "st-masked-mean", lambda h: _st_masked_mean(padded if h is None else h, mask),
         padded_leaf),
        ("mean packed", "bellm", lambda h: pool(packed if h is None else h, mode="mean", cu_seqlens=cu),
         packed_leaf),
        ("mean packed", "index_add", lambda h: _index_add_mean(packed if h is None else h, seg_ids, counts),
         packed_leaf),
        ("mean packed", "segment_reduce", lambda h: _segment_reduce_mean(packed if h is None else h, lengths),
         packed_leaf),
        ("mean+normalize packed", "bellm",
         lambda h: pool(packed if h is None else h, mode="mean", cu_seqlens=cu, normalize=True), packed_leaf),
        ("mean+normalize packed", "index_add",
         lambda h: _index_add_mean(packed if h is None else h, seg_ids, counts, normalize=True), packed_leaf),
        ("last packed", "bellm", lambda h: pool(packed if h is None else h, mode="last", cu_seqlens=cu),
         packed_leaf),
        ("last packed", "index_select", lambda h: _index_select_last(packed if h is None else h, cu),
         packed_leaf),
    ]
    for group, impl, f, leaf in cases:
        last = group.startswith("last")
        fwd_bytes = s["num_seqs"] * dim * elt if last else nbytes
        rows.append(_row(f"{group} fwd", impl, fwd(f), device, fwd_bytes, copy_gbps))
        try:
            run = fwd_bwd(f, leaf)
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            rows.append({"group": f"{group} fwd+bwd", "impl": impl,
                         "skipped": f"{type(exc).__name__}: {str(exc)[:120]}"})
            continue
        # backward writes grad_hidden once (plus the forward's read for mean)
        rows.append(_row(f"{group} fwd+bwd", impl, run, device, fwd_bytes + nbytes, copy_gbps, peak=True))
    if smoke:
        from bellm_kernels._checks import use_triton

        path = "the Triton interpreter" if use_triton(torch.zeros(1)) else "the reference path"
        for row in rows:
            row["note"] = f"smoke (CPU, tiny shapes; bellm runs {path}): not a speed result"
    return rows


def main() -> None:
    script_main(collect, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
