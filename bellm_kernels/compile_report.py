"""Offline compile report: what ptxas makes of every shipped kernel configuration, on a machine without a GPU.

    python -m bellm_kernels.compile_report --arch sm90 --arch sm80 [--head-dim 128 ...] [--json out.json]

Compiles every candidate of :func:`bellm_kernels.configs.autotune_configs` for every Triton kernel of the package
(attention forward, backward preprocess, dK/dV and dQ; pooling forward and backward and their L2 norm) for the
chosen architectures, bf16 and fp16, causal and bidirectional, in every layout (padded, padded with a key mask,
packed), and prints per architecture, kernel, head_dim and candidate the worst case over those variants:
registers, stack bytes (local memory per thread: register spills), shared memory, tensor-core instruction kind,
SASS instruction count and compile errors.

Variants that specialise to the same code (the packed and the dense padded attention layouts, for instance)
are compiled once. ``--cache FILE`` keeps the results by a hash of the kernel source, the specialisation, the
launch options and the Triton version, so a run recompiles only what changed; ``--verify N`` recompiles N cached
entries anyway and fails when one differs. ``--check`` exits non-zero on any compile error, any spilling
candidate at head_dim <= 128, or a kernel with no spill-free candidate at a larger head_dim. ``--markdown FILE``
writes the report as Markdown (KERNELS.md is made this way).

Needs the Triton wheel's NVIDIA tools (``ptxas``, ``cuobjdump``), never a GPU; ``TRITON_INTERPRET`` must be unset.
This is a static view of the compiled code, not a benchmark.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib
import json
import multiprocessing
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch
import triton

from bellm_kernels import _offline_compile, configs

ATTENTION_KERNELS = ("attn_fwd", "attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq")
POOL_KERNELS = ("pool_fwd", "pool_bwd", "pool_l2norm_fwd", "pool_l2norm_bwd")
DEFAULT_HEAD_DIMS = (64, 80, 96, 128, 256)
GATED_HEAD_DIM = 128  # at or below: every candidate spill-free; above: at least one per kernel
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_ATTN_LAYOUTS = ("padded", "padded-mask", "packed")
# pooling: layout, pool_mask given; padded inputs always carry a token mask
_POOL_LAYOUTS = ("padded-mask", "packed", "packed-pool-mask")
_POOL_MODES = {"mean": 0, "last": 1, "first": 2}
# hidden size of the pooling kernels' meta tensors (their binaries depend on it only through divisibility by 16)
_POOL_DIM = 4096
# the L2-norm kernels' block follows the hidden size: these cover every block they are shipped with from 256 up
# (SmolLM2-135M's 576 -> 1024, 2048, 4096 and more -> 4096)
_L2NORM_DIMS = (256, 512, 576, 2048, 4096)
# meta-tensor shapes: GQA with 4 query heads per kv head; head counts are run-time values in the kernels
_HEADS, _KV_HEADS, _BATCH, _SEQLEN = 32, 8, 2, 256


@dataclass(frozen=True)
class Variant:
    """One compile: a kernel, an architecture, a dtype and head_dim, a case (causal / bidir / pooling mode),
    a layout and one candidate config."""

    kernel: str
    arch: int
    dtype: str
    head_dim: int  # 0 for the pooling kernels
    case: str
    layout: str
    config: str  # "BLOCK_M=128 BLOCK_N=64 warps=8 stages=3"

    def gated(self) -> bool:
        return self.head_dim <= GATED_HEAD_DIM


def _config_name(tile: triton.Config) -> str:
    meta = " ".join(f"{k}={v}" for k, v in tile.kwargs.items())
    return f"{meta} warps={tile.num_warps} stages={tile.num_stages}"


def _parse_config(name: str) -> tuple[dict, int, int]:
    fields = dict(part.split("=") for part in name.split())
    warps, stages = int(fields.pop("warps")), int(fields.pop("stages"))
    return {k: int(v) for k, v in fields.items()}, warps, stages


def matrix(archs, head_dims, dtypes, kernels) -> list[Variant]:
    """Every shipped (kernel, arch, dtype, head_dim, case, layout, candidate) combination."""
    out = []
    for arch in archs:
        capability = (arch // 10, arch % 10)
        for dtype in dtypes:
            for kernel in kernels:
                if kernel in POOL_KERNELS and "l2norm" in kernel:
                    # case "hidden=N": the hidden size that picks the block
                    out += [Variant(kernel, arch, dtype, 0, f"hidden={dim}", "-", _config_name(t))
                            for dim in _L2NORM_DIMS
                            for t in configs.autotune_configs(kernel, dim, _DTYPES[dtype], capability)]
                    continue
                if kernel in POOL_KERNELS:
                    tiles = configs.autotune_configs(kernel, _POOL_DIM, _DTYPES[dtype], capability)
                    # "+norm": normalize=True, where the pooled vector goes through a float32 buffer
                    modes = tuple(m + n for m in _POOL_MODES for n in ("", "+norm"))
                    out += [Variant(kernel, arch, dtype, 0, mode, layout, _config_name(t))
                            for mode in modes for layout in _POOL_LAYOUTS for t in tiles]
                    continue
                cases = ("-",) if kernel == "attn_bwd_preprocess" else ("causal", "bidir")
                for head_dim in head_dims:
                    tiles = configs.autotune_configs(kernel, head_dim, _DTYPES[dtype], capability)
                    out += [Variant(kernel, arch, dtype, head_dim, case, layout, _config_name(t))
                            for case in cases for layout in _ATTN_LAYOUTS for t in tiles]
    return out


def _attention_args(v: Variant) -> dict:
    attn = importlib.import_module("bellm_kernels.attention")
    meta = dict(dtype=_DTYPES[v.dtype], device="meta")
    rows = _BATCH * _SEQLEN
    if v.layout == "packed":
        q = torch.empty(rows, _HEADS, v.head_dim, **meta)
        kv = torch.empty(rows, _KV_HEADS, v.head_dim, **meta)
        cu = torch.empty(_BATCH + 1, dtype=torch.int32, device="meta")
        lay = attn._make_layout(q, cu, _SEQLEN, None)
    else:
        q = torch.empty(_BATCH, _SEQLEN, _HEADS, v.head_dim, **meta)
        kv = torch.empty(_BATCH, _SEQLEN, _KV_HEADS, v.head_dim, **meta)
        mask = torch.empty(_BATCH, _SEQLEN, dtype=torch.bool, device="meta") if v.layout == "padded-mask" else None
        lay = attn._make_layout(q, None, None, mask)
    lse = torch.empty(_HEADS, lay.rows, dtype=torch.float32, device="meta")
    causal, scale = v.case == "causal", v.head_dim**-0.5
    if v.kernel == "attn_fwd":
        return attn._fwd_args(q, kv, kv, torch.empty_like(q), lse, causal, scale, lay)
    pre, dkdv, dq = attn._bwd_args(torch.empty_like(q), q, kv, kv, torch.empty_like(q), lse, torch.empty_like(lse),
                                   torch.empty_like(q), torch.empty_like(kv), torch.empty_like(kv), causal, scale,
                                   lay)
    return {"attn_bwd_preprocess": pre, "attn_bwd_dkdv": dkdv, "attn_bwd_dq": dq}[v.kernel]


def _pool_args(v: Variant) -> dict:
    """The arguments ``bellm_kernels.pool`` launches its kernels with, built by its own argument builders."""
    pool = importlib.import_module("bellm_kernels.pool")
    dtype = _DTYPES[v.dtype]
    dim = int(v.case.removeprefix("hidden=")) if v.case.startswith("hidden=") else _POOL_DIM
    meta = dict(device="meta")
    f32, i32 = dict(dtype=torch.float32, **meta), dict(dtype=torch.int32, **meta)
    pooled, norm = torch.empty(_BATCH, dim, **f32), torch.empty(_BATCH, **f32)
    if v.kernel == "pool_l2norm_fwd":
        return pool._l2norm_fwd_args(pooled, torch.empty(_BATCH, dim, dtype=dtype, **meta), norm)
    if v.kernel == "pool_l2norm_bwd":
        return pool._l2norm_bwd_args(torch.empty(_BATCH, dim, dtype=dtype, **meta), pooled, norm,
                                     torch.empty(_BATCH, dim, **f32))
    packed = v.layout.startswith("packed")
    shape = (_BATCH * _SEQLEN, dim) if packed else (_BATCH, _SEQLEN, dim)
    hidden = torch.empty(shape, dtype=dtype, **meta)
    keep = None if v.layout == "packed" else torch.empty(shape[:-1], dtype=torch.uint8, **meta)
    cu_seqlens = torch.empty(_BATCH + 1, **i32) if packed else None
    count, sel = torch.empty(_BATCH, **i32), torch.empty(_BATCH, dtype=torch.int64, **meta)
    # "+norm": the pooled vector goes through a float32 buffer
    out = torch.empty(_BATCH, dim, dtype=torch.float32 if v.case.endswith("+norm") else dtype, **meta)
    mode_id = _POOL_MODES[v.case.removesuffix("+norm")]
    if v.kernel == "pool_fwd":
        return pool._fwd_args(hidden, keep, cu_seqlens, out, count, sel, mode_id)
    return pool._bwd_args(out, keep, cu_seqlens, count, sel, hidden, mode_id)


def _kernel_fn(kernel: str):
    attn = importlib.import_module("bellm_kernels.attention")
    pool = importlib.import_module("bellm_kernels.pool")
    return {
        "attn_fwd": attn._attn_fwd_kernel, "attn_bwd_preprocess": attn._attn_bwd_preprocess_kernel,
        "attn_bwd_dkdv": attn._attn_bwd_dkdv_kernel, "attn_bwd_dq": attn._attn_bwd_dq_kernel,
        "pool_fwd": pool._pool_fwd_kernel, "pool_bwd": pool._pool_bwd_kernel,
        "pool_l2norm_fwd": pool._l2norm_fwd_kernel, "pool_l2norm_bwd": pool._l2norm_bwd_kernel,
    }[kernel]


def build(v: Variant):
    """(jit function, every argument by name, num_warps, num_stages) of one variant."""
    meta, warps, stages = _parse_config(v.config)
    args = _pool_args(v) if v.kernel in POOL_KERNELS else _attention_args(v)
    return _kernel_fn(v.kernel), {**args, **meta}, warps, stages


def _key(v: Variant) -> str:
    fn, args, warps, stages = build(v)
    return _offline_compile.compile_key(fn, args, v.arch, warps, stages)


def _compile(v: Variant) -> dict:
    fn, args, warps, stages = build(v)
    return _offline_compile.compile_kernel(fn, args, v.arch, warps, stages).as_dict()


def _load_cache(path: str | None) -> dict:
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("entries", {})


def _save_cache(path: str, old: dict, fresh: dict, prune: bool = False) -> None:
    """Write ``old`` updated with ``fresh``; ``prune`` drops this Triton version's entries not in ``fresh``
    (left behind by earlier kernel sources)."""
    kept = {k: e for k, e in old.items() if not (prune and e.get("triton") == triton.__version__)}
    kept.update(fresh)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # written whole, then renamed: an interrupted run leaves the old cache
    with open(tmp, "w") as f:
        f.write('{"format": 1, "entries": {\n')
        f.write(",\n".join(f"{json.dumps(k)}: {json.dumps(kept[k], sort_keys=True)}" for k in sorted(kept)))
        f.write("\n}}\n")
    os.replace(tmp, path)


_NOT_COMPILED = "not compiled: not in the cache (run without --cached-only)"


def run(variants: list[Variant], jobs: int = 1, cache: str | None = None, verify: int = 0, prune: bool = False,
        cached_only: bool = False, log=print) -> list[dict]:
    """Compile (or read from the cache) every variant; one row per variant, the result fields inline.
    ``cached_only``: compile nothing, report what the cache lacks as an error."""
    keys = {v: _key(v) for v in variants}
    old = _load_cache(cache)
    unique = {}
    for v, key in keys.items():
        unique.setdefault(key, v)
    todo = [k for k in unique if k not in old]
    if cached_only:
        old = {**old, **{k: dict(asdict(_offline_compile.CompileResult(error=_NOT_COMPILED)), triton="-")
                         for k in todo}}
        todo = []
    hits = sorted(set(unique) - set(todo))
    checked = random.Random(int(time.time())).sample(hits, min(verify, len(hits)))
    log(f"{len(variants)} variants, {len(unique)} distinct binaries: {len(hits)} cached, {len(todo)} to compile"
        + (f", {len(checked)} cached ones recompiled to verify the cache" if checked else ""))
    start = time.time()
    results = {}
    work = todo + checked

    def done(i: int, key: str, res: dict) -> None:
        results[key] = res
        _progress(log, i + 1, len(work), start)
        if cache and (i + 1) % 25 == 0:  # keep what is done if the run is stopped
            _save_cache(cache, old, {k: dict(r, triton=triton.__version__) for k, r in results.items()
                                     if k not in old})

    if jobs > 1 and len(work) > 1:
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            for i, (key, res) in enumerate(zip(work, pool.map(_compile, [unique[k] for k in work]))):
                done(i, key, res)
    else:
        for i, key in enumerate(work):
            done(i, key, _compile(unique[key]))
    fresh = {}
    for key in unique:
        entry = dict(old[key]) if key in old else dict(results[key], triton=triton.__version__)
        if key in checked:
            now = results[key]
            fields = ("registers", "stack", "shared", "error")
            if any(now[f] != entry.get(f) for f in fields):
                entry = dict(now, triton=triton.__version__)
                entry["error"] = (entry["error"] + "; " if entry["error"] else "") + "cache entry differed"
        fresh[key] = entry
    if cache and not cached_only and (todo or prune or any(fresh[k] != old.get(k) for k in fresh)):
        _save_cache(cache, old, fresh, prune)
    return [dict(asdict(v), key=keys[v], **{k: x for k, x in fresh[keys[v]].items() if k != "triton"})
            for v in variants]


def _progress(log, done: int, total: int, start: float) -> None:
    if done == total or done % 25 == 0:
        log(f"  compiled {done}/{total} in {time.time() - start:.0f}s")


def summarize(rows: list[dict]) -> list[dict]:
    """Per (arch, kernel, head_dim, config): the worst case over dtypes, cases and layouts."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["kernel"], r["head_dim"], r["config"]), []).append(r)
    out = []
    for (arch, kernel, head_dim, config), rs in groups.items():
        errors = sorted({r["error"] for r in rs if r["error"]})
        ok = [r for r in rs if not r["error"]]
        out.append(dict(
            arch=arch, kernel=kernel, head_dim=head_dim, config=config, variants=len(rs),
            registers=max((r["registers"] for r in ok), default=0), stack=max((r["stack"] for r in ok), default=0),
            shared=max((r["shared"] for r in ok), default=0),
            tensor_cores="/".join(sorted({r["tensor_cores"] for r in ok})) or "-",
            sass=max((r["sass"] for r in ok), default=0),
            stl_ldl="{}/{}".format(max((r["local_stores"] for r in ok), default=0),
                                   max((r["local_loads"] for r in ok), default=0)),
            spilling=sum(r["stack"] > 0 for r in ok), errors=errors,
        ))
    return out


def problems(rows: list[dict]) -> list[str]:
    """What ``--check`` fails on: compile errors, spills at head_dim <= 128, kernels never spill-free above."""
    out = [f"compile error: {r['kernel']} sm{r['arch']} {r['dtype']} hd{r['head_dim']} {r['case']} "
           f"{r['layout']} [{r['config']}]: {r['error']}" for r in rows if r["error"]]
    out += [f"spills {r['stack']} B: {r['kernel']} sm{r['arch']} {r['dtype']} hd{r['head_dim']} {r['case']} "
            f"{r['layout']} [{r['config']}]" for r in rows if r["stack"] > 0 and r["head_dim"] <= GATED_HEAD_DIM]
    large: dict[tuple, dict[str, bool]] = {}
    for r in rows:
        if r["head_dim"] > GATED_HEAD_DIM:
            group = (r["kernel"], r["arch"], r["dtype"], r["head_dim"], r["case"], r["layout"])
            clean = r["stack"] == 0 and not r["error"]
            large.setdefault(group, {})[r["config"]] = large.get(group, {}).get(r["config"], True) and clean
    out += [f"no spill-free candidate: {k[0]} sm{k[1]} {k[2]} hd{k[3]} {k[4]} {k[5]}"
            for k, by_config in large.items() if not any(by_config.values())]
    return out


_COLUMNS = [("kernel", "kernel"), ("head_dim", "head_dim"), ("config", "config"), ("variants", "variants"),
            ("registers", "regs"), ("stack", "stack B"), ("shared", "smem B"), ("tensor_cores", "tensor cores"),
            ("sass", "SASS"), ("stl_ldl", "STL/LDL"), ("errors", "errors")]


def _cell(row: dict, field: str) -> str:
    value = row[field]
    if field == "head_dim":
        return str(value) if value else "-"
    if field == "errors":
        return "; ".join(value) if value else "-"
    return str(value)


def format_text(summary: list[dict]) -> str:
    lines = []
    for arch in sorted({s["arch"] for s in summary}, reverse=True):
        rows = [s for s in summary if s["arch"] == arch]
        table = [[h for _, h in _COLUMNS]] + [[_cell(r, f) for f, _ in _COLUMNS] for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
        lines.append(f"sm{arch}")
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        lines.append("")
    return "\n".join(lines)


def format_markdown(summary: list[dict], rows: list[dict], command: str) -> str:
    spilling = sum(r["stack"] > 0 for r in rows)
    errors = sum(bool(r["error"]) for r in rows)
    head = [
        "# Kernels: what the compiler makes of them",
        "",
        "Generated by `bellm_kernels.compile_report`; do not edit by hand. Regenerate with:",
        "",
        f"    {command}",
        "",
        f"Triton {triton.__version__}, {datetime.date.today().isoformat()}; cubins built offline (no GPU) for each "
        "architecture and read with the wheel's `cuobjdump`.",
        "",
        "**This is not a GPU benchmark.** It shows registers, spills (stack bytes: local memory per thread), shared "
        "memory, the tensor-core instruction kind and code size of every shipped autotune candidate; speed is measured "
        "on a GPU with `benchmarks/`.",
        "",
        f"{len(rows)} variants ({' and '.join(sorted({r['dtype'] for r in rows}))}, head_dim "
        f"{', '.join(str(d) for d in sorted({r['head_dim'] for r in rows if r['head_dim']}))}, causal and "
        "bidirectional, padded / padded with a key mask / packed, each candidate; the pooling kernels in every "
        "mode (mean, last, first; with and without normalisation) and layout, and the L2-norm kernels at hidden "
        f"sizes {', '.join(map(str, _L2NORM_DIMS))}), {len({r['key'] for r in rows})} "
        f"distinct binaries: {spilling} spill, {errors} fail to compile. Each row below is the worst case over its "
        "variants; `stack B` > 0 means register spills.",
        "",
    ]
    body = []
    for arch in sorted({s["arch"] for s in summary}, reverse=True):
        body += [f"## sm{arch}", "", "| " + " | ".join(h for _, h in _COLUMNS) + " |",
                 "|" + "---|" * len(_COLUMNS)]
        body += ["| " + " | ".join(_cell(r, f) for f, _ in _COLUMNS) + " |" for r in summary if r["arch"] == arch]
        body.append("")
    return "\n".join(head + body)


def _arch(value: str) -> int:
    arch = value.lower().removeprefix("sm_").removeprefix("sm")
    if arch not in ("80", "90"):
        raise argparse.ArgumentTypeError(f"--arch {value!r}: use sm80 or sm90")
    return int(arch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bellm_kernels.compile_report", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=_arch, action="append", help="sm90 and/or sm80 (default: both)")
    parser.add_argument("--head-dim", type=int, action="append", help=f"default: {DEFAULT_HEAD_DIMS}")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), action="append", help="default: bf16 and fp16")
    parser.add_argument("--kernel", choices=configs.KERNELS, action="append", help="default: all")
    parser.add_argument("--jobs", type=int, default=1, help="parallel compile processes (default 1)")
    parser.add_argument("--cache", help="JSON file of earlier results, keyed by a hash of what decides the binary")
    parser.add_argument("--verify", type=int, default=0, help="recompile N cached entries and compare")
    parser.add_argument("--cached-only", action="store_true",
                        help="compile nothing: report only what the cache holds (the rest as errors)")
    parser.add_argument("--prune", action="store_true",
                        help="drop this Triton version's cache entries that this run did not use")
    parser.add_argument("--json", help="write every variant's result to this file")
    parser.add_argument("--markdown", help="write the report as Markdown to this file")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 on a compile error, a spill at head_dim <= {GATED_HEAD_DIM}, or a kernel with "
                             "no spill-free candidate at a larger head_dim")
    args = parser.parse_args(argv)
    # Triton 3.9 warns once per process that its FP-fusion default will change; the report keeps the default
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("TRITON_INTERPRET=1 is set: the interpreter compiles nothing; unset it for this report")
    try:
        _offline_compile.nvidia_tools()
    except _offline_compile.ToolsMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    archs = args.arch or [90, 80]
    head_dims = args.head_dim or list(DEFAULT_HEAD_DIMS)
    bad = [d for d in head_dims if d % 8 or not 16 <= d <= 256]
    if bad:
        parser.error(f"--head-dim {bad[0]}: use a multiple of 8 from 16 to 256")
    variants = matrix(archs, head_dims, args.dtype or ["bf16", "fp16"], args.kernel or list(configs.KERNELS))
    rows = run(variants, jobs=args.jobs, cache=args.cache, verify=args.verify, prune=args.prune,
               cached_only=args.cached_only,
               log=lambda m: print(m, file=sys.stderr, flush=True))
    summary = summarize(rows)
    print(f"Triton {triton.__version__}")
    print(format_text(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "rows": rows}, f, indent=1)
    if args.markdown:
        command = "python -m bellm_kernels.compile_report " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.markdown, "w") as f:
            f.write(format_markdown(summary, rows, command.strip()))
    found = problems(rows)
    for line in found:
        print(line)
    print(f"{len(found)} problems" if found else "no compile errors; no spills at head_dim <= "
          f"{GATED_HEAD_DIM}; every kernel has a spill-free candidate above")
    return 1 if (args.check and found) else 0


if __name__ == "__main__":
    sys.exit(main())
