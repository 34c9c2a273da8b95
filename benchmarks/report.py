"""Turn a results JSON into BENCHMARKS.md and PNG charts.

    python -m benchmarks.report benchmarks/results.json [--output BENCHMARKS.md]
                                [--charts-dir benchmarks/charts] [--allow-cpu]
                                [--cpu benchmarks/results-cpu.json] [--serve benchmarks/results-serve.json]

The input is what ``python -m benchmarks.run`` wrote (or a ``pytest benchmarks/ --benchmark-only
--benchmark-json=FILE`` file, whose ``extra_info`` carries the same rows). The report has a header naming
the GPU, driver, torch/triton/transformers versions, git commit and date; a summary of bellm against the
fastest peer of every group; then one table per group with each implementation's median and 20/80 quantiles,
its metrics, and its time divided by the fastest peer's time (the peers being every implementation that is
not bellm). Skipped peers are listed with their reasons. One chart per module shows bellm's speed-up over
the fastest peer per group.

No number may enter BENCHMARKS.md unless it was measured on a named GPU: a results file without a GPU, or
from a ``--smoke`` run, is refused unless ``--allow-cpu`` is given, and the report is then labelled as a
smoke run that says nothing about speed.

The one exception is the **CPU section**: ``--cpu FILE [FILE ...]`` (output of ``python -m benchmarks.bench_cpu``, real
SmolLM2 on CPU threads) adds a section headed and labelled as CPU, with its own environment line; without a GPU
results file, BENCHMARKS.md holds only that section and says that no GPU benchmark has been run. ``--serve FILE``
(the ``--output`` of ``python -m benchmarks.bench_serve``) adds the serving table to that section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TIMING_KEYS = ("median_ms", "p20_ms", "p80_ms")
RESERVED_KEYS = {"module", "group", "impl", "skipped", "note", "error", *TIMING_KEYS}
METRICS = {  # known metric keys and their column headers, in column order; other numeric keys follow
    "tflops": "TFLOP/s",
    "tflops_padded": "padded TFLOP/s",
    "gbps": "GB/s",
    "tokens_per_s": "tokens/s",
    "roofline_frac": "of roofline",
    "matmul_tflops": "matmul TFLOP/s (roofline)",
    "peak_mem_mb": "peak MiB",
}


# ----------------------------------------------------------------------------------------------------
# Loading and classifying


def load_results(path: str | os.PathLike) -> dict:
    """Read a results file: ``benchmarks.run`` output, or pytest-benchmark JSON converted to that shape."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if "benchmarks" in data and "rows" not in data:  # pytest-benchmark --benchmark-json
        infos = [b.get("extra_info", {}) for b in data["benchmarks"]]
        infos = [i for i in infos if "rows" in i]
        if not infos:
            raise ValueError(f"{path}: a pytest-benchmark file without bellm rows (run pytest benchmarks/)")
        return {"environment": infos[0].get("environment", {}), "smoke": any(i.get("smoke") for i in infos),
                "errors": [], "rows": [row for i in infos for row in i["rows"]]}
    if "rows" not in data or "environment" not in data:
        raise ValueError(f"{path}: not a results file from `python -m benchmarks.run` "
                         "(no 'rows'/'environment')")
    return data


def is_gpu_benchmark(results: dict) -> bool:
    """True when the results were measured on a named GPU at full size (not a smoke run)."""
    return bool(results["environment"].get("gpu")) and not results.get("smoke", False)


def is_bellm(impl: str) -> bool:
    """bellm's own rows (``bellm``, ``bellm-...``); every other impl is a peer."""
    return impl == "bellm" or impl.startswith(("bellm-", "bellm_"))


def timed(row: dict) -> bool:
    return "skipped" not in row and row.get("median_ms") is not None


def grouped(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """``{module: {group: [rows]}}`` in first-appearance order."""
    out: dict[str, dict[str, list[dict]]] = {}
    for row in rows:
        out.setdefault(row.get("module", "other"), {}).setdefault(row["group"], []).append(row)
    return out


def best_peer(rows: list[dict]) -> dict | None:
    """The fastest timed non-bellm row of a group (lowest median), or None when no peer ran."""
    peers = [r for r in rows if timed(r) and not is_bellm(r["impl"])]
    return min(peers, key=lambda r: r["median_ms"]) if peers else None


def ratio_to_best_peer(row: dict, best: dict | None) -> float | None:
    """``row`` median time / the fastest peer's median time (< 1: faster than every peer)."""
    if best is None or not timed(row):
        return None
    return row["median_ms"] / best["median_ms"]


def summary(results: dict) -> list[dict]:
    """One entry per bellm row that has a timed peer: module, group, impl, times, ratio, speed-up."""
    out = []
    for module, groups in grouped(results["rows"]).items():
        for group, rows in groups.items():
            best = best_peer(rows)
            for row in rows:
                if is_bellm(row["impl"]) and timed(row):
                    ratio = ratio_to_best_peer(row, best)
                    out.append({"module": module, "group": group, "impl": row["impl"],
                                "median_ms": row["median_ms"],
                                "peer": best["impl"] if best else None,
                                "peer_ms": best["median_ms"] if best else None,
                                "ratio": ratio, "speedup": 1 / ratio if ratio else None})
    return out


# ----------------------------------------------------------------------------------------------------
# Markdown


def _num(value: float) -> str:
    """Readable at any magnitude: 12,345 / 312.4 / 2.35 / 0.0042."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _ratio(value: float) -> str:
    """Two decimals for ordinary ratios (1.50), no false zeros for extreme ones (0.0042, 2,437)."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def _ms(value: float) -> str:
    return _num(value)


def _metric(key: str, value: float) -> str:
    return f"{value:.0%}" if key == "roofline_frac" else _num(value)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _metric_keys(rows: list[dict]) -> list[str]:
    present = {k for r in rows for k, v in r.items()
               if k not in RESERVED_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return [k for k in METRICS if k in present] + sorted(present - set(METRICS))


def _speedup_text(ratio: float) -> str:
    speedup = 1 / ratio
    return f"{_ratio(speedup)}× faster" if speedup >= 1 else f"{_ratio(ratio)}× slower"


def group_table(rows: list[dict]) -> list[str]:
    """Markdown table lines for one group.

    Besides each row's time ÷ the fastest peer's, every timed peer row shows bellm's speed-up over that
    peer (peer time ÷ time of the fastest bellm row), so that pairwise claims such as "vs FA2 varlen" or
    "vs padded cuDNN" read straight off the table.
    """
    best = best_peer(rows)
    bellm_rows = [r for r in rows if timed(r) and is_bellm(r["impl"])]
    bellm = min(bellm_rows, key=lambda r: r["median_ms"]) if bellm_rows else None
    metrics = _metric_keys(rows)
    header = ["impl", "median ms", "p20–p80 ms", *(METRICS.get(k, k) for k in metrics),
              "time ÷ fastest peer", "bellm speed-up over it", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in rows:
        impl = f"**{row['impl']}**" if is_bellm(row["impl"]) else row["impl"]
        if not timed(row):
            cells = [impl, "skipped", "", *([""] * len(metrics)), "", "", _cell(row.get("skipped", ""))]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        values = ["" if row.get(k) is None else _metric(k, row[k]) for k in metrics]
        ratio = ratio_to_best_peer(row, best)
        if ratio is None:
            ratio_text = "no peer ran"
        elif row is best:
            ratio_text = "1.00 (fastest peer)"
        elif is_bellm(row["impl"]):
            ratio_text = f"**{_ratio(ratio)}** ({_speedup_text(ratio)})"
        else:
            ratio_text = _ratio(ratio)
        speedup = ""
        if bellm is not None and not is_bellm(row["impl"]):
            speedup = f"{_ratio(row['median_ms'] / bellm['median_ms'])}×"
        cells = [impl, _ms(row["median_ms"]), f"{_ms(row['p20_ms'])}–{_ms(row['p80_ms'])}", *values,
                 ratio_text, speedup, _cell(row.get("note", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _interpreter_note(results: dict) -> str:
    if not results["environment"].get("triton_interpret"):
        return ""
    modules = [m for m, info in results.get("modules", {}).items() if info.get("triton_interpret")]
    return f"; Triton interpreter ({', '.join(modules)})" if modules else "; Triton interpreter"


def header_lines(results: dict, source: str) -> list[str]:
    env = results["environment"]
    gpu = env.get("gpu")
    lines = ["# bellm benchmarks", ""]
    if not is_gpu_benchmark(results):
        kind = f"Smoke run on {gpu} — not a benchmark" if gpu else "CPU smoke run — not a GPU benchmark"
        how = "a `--smoke` run with tiny shapes" if results.get("smoke") else "a run without a GPU"
        lines += [f"> **{kind}.** These rows come from {how}: they check that the suite and this report work "
                  "and say nothing about speed. Do not quote them.", ""]
    lines += [f"Generated by `python -m benchmarks.report` from `{source}`; do not edit by hand. "
              "Rerun with `python -m benchmarks.run && python -m benchmarks.report benchmarks/results.json` "
              "(see `benchmarks/README.md`).", ""]
    device = gpu or "none (CPU)"
    if gpu and env.get("capability"):
        device += f" (sm {env['capability']})"
    table = [
        ("GPU", device),
        ("driver", env.get("driver", "unknown")),
        ("torch / triton / transformers",
         " / ".join(env.get(k, "?") for k in ("torch", "triton", "transformers"))),
        ("python", env.get("python", "?")),
        ("git commit", env.get("commit", "unknown") + (" + uncommitted changes" if env.get("dirty") else "")),
        ("date (UTC)", env.get("date", "unknown")),
        ("mode", ("smoke (tiny shapes)" if results.get("smoke") else "full") + _interpreter_note(results)),
    ]
    lines += ["| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in table), ""]
    lines += ["Times are medians of `triton.testing.do_bench` (CUDA) or of a synchronised timer loop, after "
              "warm-up, on random data. **time ÷ fastest peer** divides a row's median by the fastest "
              "non-bellm implementation's median in the same group and run: below 1 means faster than every "
              "peer. Metric conventions: `benchmarks/README.md`.", ""]
    return lines


def render_markdown(results: dict, source: str = "results.json", charts: dict[str, str] | None = None) -> str:
    """The whole BENCHMARKS.md text; ``charts`` maps module → chart path relative to the markdown file."""
    charts = charts or {}
    lines = header_lines(results, source)
    rows_summary = summary(results)
    lines += ["## Summary: bellm vs the fastest peer", ""]
    if rows_summary:
        lines += ["| module | group | bellm ms | fastest peer | peer ms | bellm ÷ peer time | speed-up |",
                  "|---|---|---|---|---|---|---|"]
        for s in rows_summary:
            impl = "" if s["impl"] == "bellm" else f" ({s['impl']})"
            if s["peer"] is None:
                tail = "no peer ran | | | "
            else:
                tail = (f"{s['peer']} | {_ms(s['peer_ms'])} | {_ratio(s['ratio'])} | "
                        f"**{_ratio(s['speedup'])}×**")
            lines.append(f"| {s['module']} | {_cell(s['group'])}{impl} | {_ms(s['median_ms'])} | {tail} |")
    else:
        lines.append("No bellm row was timed.")
    lines.append("")
    from benchmarks.targets import markdown_lines as target_lines  # measured / target / met

    lines += [*target_lines(results), ""]
    if results.get("errors"):
        lines += ["**Modules that crashed** (their rows are marked skipped below):", ""]
        lines += [f"- `{_cell(e)}`" for e in results["errors"]] + [""]
    for module, groups in grouped(results["rows"]).items():
        lines += [f"## {module}", ""]
        if module in charts:
            lines += [f"![{module}: bellm speed-up over the fastest peer]({charts[module]})", ""]
        for group, rows in groups.items():
            lines += [f"### {_cell(group)}", "", *group_table(rows), ""]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------
# The CPU section (benchmarks/bench_cpu.py)


def load_cpu_results(*paths: str | os.PathLike) -> dict:
    """One or more ``bench_cpu`` results files as one: their rows in order, each row with its run (a row
    without one gets its file's date, commit, threads and load), the environment of the last file. A group
    (at one thread count) in a later file replaces the same group of an earlier one."""
    merged: dict = {"kind": "cpu", "rows": []}
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("kind") != "cpu" or "rows" not in data:
            raise ValueError(f"{path}: not a results file from `python -m benchmarks.bench_cpu`")
        if len(paths) == 1:
            return data
        env = data.get("environment", {})
        run = {k: env.get(k) for k in ("date", "commit", "threads", "load_average_at_start", "load_average_at_end")}
        rows = [{"threads": run["threads"], "run": run, **row} for row in data["rows"]]
        replaced = {(r["group"], r["threads"]) for r in rows}
        merged["rows"] = [r for r in merged["rows"] if (r["group"], r["threads"]) not in replaced] + rows
        merged["environment"] = env
    return merged


def _load_text(start, end) -> str:
    return ", ".join("?" if x is None else f"{x:.1f}" for x in (start, end))


def cpu_section(results: dict, source: str) -> list[str]:
    """Markdown lines of the CPU section: environment, then one table per group (and thread count), bellm
    against each peer; a group without a plain ``bellm`` row is compared with its fastest row. Rows that record
    their run (``run``: date, commit, load) get a run line per group; older files have one run for all."""
    env = results["environment"]
    lines = [
        "## CPU (not a GPU benchmark)", "",
        f"Generated from {source}, written by `python -m benchmarks.bench_cpu`; do not edit by hand. The real "
        "SmolLM2-135M-Instruct in float32, the same weights for every contender; each measurement is its own "
        "process (peak RSS is that process's, of the timed part), contenders alternate in rounds, and the time "
        "is the median over rounds. Other processes shared the cores (load average below): compare ratios "
        "within a group, not absolute times.", "",
        "| | |", "|---|---|",
        f"| CPU | {_cell(env.get('cpu', '?'))}, {env.get('cpu_count', '?')} cores |",
        "| torch / transformers | " + " / ".join(env.get(k, "?") for k in ("torch", "transformers")) + " |",
        f"| python | {env.get('python', '?')} |",
    ]
    if not any("run" in r for r in results["rows"]):
        lines += [
            f"| torch threads | {env.get('threads', '?')} |",
            f"| git commit | {env.get('commit', 'unknown')} |",
            f"| date (UTC) | {env.get('date', 'unknown')} |",
            "| load average (start, end) | "
            + _load_text(env.get("load_average_at_start"), env.get("load_average_at_end")) + " |",
        ]
    lines.append("")
    by_group: dict[tuple, list[dict]] = {}
    for row in results["rows"]:
        if row.get("module") == "cpu":
            by_group.setdefault((row["group"], row.get("threads")), []).append(row)
    for (group, threads), rows in by_group.items():
        lines += _cpu_group_table(group, threads, rows)
    return lines


def _cpu_group_table(group: str, threads, rows: list[dict]) -> list[str]:
    timed_rows = [r for r in rows if timed(r)]
    ref = next((r for r in timed_rows if r["impl"] == "bellm"), None)
    if ref is None and timed_rows:
        ref = min(timed_rows, key=lambda r: r["median_ms"])
    ref_name = "bellm" if ref is None else ref["impl"]
    heading = group if threads is None else f"{group}, {threads} torch thread{'s' if threads != 1 else ''}"
    lines = [f"### {_cell(heading)}", ""]
    run = next((r["run"] for r in rows if "run" in r), None)
    if run is not None:
        lines += [f"Run {run.get('date', '?')}, commit {run.get('commit') or 'unknown'}, load average (start, end) "
                  f"{_load_text(run.get('load_average_at_start'), run.get('load_average_at_end'))}.", ""]
    lines += [f"| impl | time s | tokens/s | peak RSS MB | {ref_name} speed-up over it | {ref_name} RSS ÷ its RSS "
              "| max abs diff vs HF | rounds | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        impl = f"**{row['impl']}**" if row is ref else row["impl"]
        if not timed(row):
            lines.append(f"| {impl} | skipped | | | | | | | {_cell(row.get('skipped', ''))} |")
            continue
        speed = mem = ""
        if ref is not None and row is not ref:
            speed = f"**{_ratio(row['median_ms'] / ref['median_ms'])}×**"
            mem = _ratio(ref["peak_rss_mb"] / row["peak_rss_mb"])
        diff = row.get("max_abs_diff_vs_hf")
        lines.append(
            f"| {impl} | {_num(row['median_ms'] / 1000)} | {_num(row['tokens_per_s'])} | "
            f"{row['peak_rss_mb']:.0f} | {speed} | {mem} | {'' if diff is None else f'{diff:.2g}'} | "
            f"{row.get('rounds', '')} | {_cell(row.get('note', ''))} |"
        )
    lines.append("")
    return lines


def load_serve_results(path: str | os.PathLike) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("kind") != "serve" or "rows" not in data or "forward_cost" not in data:
        raise ValueError(f"{path}: not a results file from `python -m benchmarks.bench_serve --output FILE`")
    return data


SERVE_ARMS = {"offline-encode": "offline `Encoder.encode`", "bellm-serve": "**bellm serve**",
              "bellm-serve-unbatched": "bellm serve --no-batching"}


def serve_section(results: dict, source: str) -> list[str]:
    """Markdown lines of the serving table: sentences/s and p50/p99 per client count and arm, the batched
    server's throughput over each arm's, and the forward cost of 1 sentence against a batch."""
    env, cost = results["environment"], results["forward_cost"]
    lines = [
        "### Serving: `bellm serve` on CPU", "",
        f"Generated from {source}, written by `python -m benchmarks.bench_serve --output`; do not edit by hand. "
        f"{env.get('model', '?')}, {env.get('sentences', '?')}, one sentence per request, "
        f"{env.get('max_batch_tokens', '?')} tokens per forward; clients are threads on the same cores as the "
        "servers. Run "
        f"{env.get('date', '?')}, commit {env.get('commit') or 'unknown'}, torch {env.get('torch', '?')}, "
        f"{env.get('cpu_count', '?')} cores, {env.get('threads', '?')} torch threads, load average (start, end) "
        f"{_load_text(env.get('load_average_at_start'), env.get('load_average_at_end'))}.", "",
        "| clients | arm | sentences/s | p50 ms | p99 ms | batched server's sentences/s ÷ its | rounds | "
        "sentences |",
        "|---|---|---|---|---|---|---|---|",
    ]
    batched = {r["clients"]: r["sentences_per_s"] for r in results["rows"] if r["impl"] == "bellm-serve"}
    for row in results["rows"]:
        ratio = ""
        if row["impl"] != "bellm-serve" and row["clients"] in batched:
            ratio = f"**{_ratio(batched[row['clients']] / row['sentences_per_s'])}×**"
        p50, p99 = (_num(row[k]) if k in row else "" for k in ("p50_ms", "p99_ms"))
        lines.append(f"| {row['clients']} | {SERVE_ARMS.get(row['impl'], _cell(row['impl']))} | "
                     f"{_num(row['sentences_per_s'])} | {p50} | {p99} | {ratio} | {row.get('rounds', '')} | "
                     f"{row.get('sentences', '')} |")
    lines += [
        "",
        f"Forward cost in the benchmark's own process, no HTTP: {_num(cost['ms_per_sentence_alone'])} ms per "
        f"sentence encoded alone, {_num(cost['ms_per_sentence_batched'])} ms per sentence in one forward of "
        f"{cost['batch']} (quotient {_ratio(cost['ceiling'])}×: what batching saves per sentence in the forward "
        "itself). " + _serve_conclusion(results),
        "",
    ]
    return lines


def _serve_conclusion(results: dict) -> str:
    """One sentence on the batched server's gain over the unbatched one at the most clients, read against the
    forward cost: inside the forward's own gain, the rest of the gap lies outside the forward."""
    top = max(r["clients"] for r in results["rows"])
    at = {r["impl"]: r["sentences_per_s"] for r in results["rows"] if r["clients"] == top}
    if "bellm-serve" not in at or "bellm-serve-unbatched" not in at:
        return ""
    gain, ceiling = at["bellm-serve"] / at["bellm-serve-unbatched"], results["forward_cost"]["ceiling"]
    if gain >= ceiling:
        return (f"At {top} clients the batched server reached {_ratio(gain)}× the unbatched one: all the forward's "
                "own gain.")
    return (f"At {top} clients the batched server reached {_ratio(gain)}× the unbatched one, less than the "
            f"forward's {_ratio(ceiling)}×: the rest is spent outside the forward (HTTP, tokenizing and queueing "
            "per request, and the client threads, which share the cores with the servers).")


def render_cpu_only(cpu: dict | None, source: str, serve: dict | None = None, serve_source: str = "") -> str:
    lines = ["# bellm benchmarks", "",
             "No GPU benchmark has been run yet: this file holds the CPU section only. The GPU sections are "
             "generated by `python -m benchmarks.run` + `python -m benchmarks.report` on a named GPU "
             "(see `benchmarks/README.md`).", ""]
    lines += cpu_section(cpu, source) if cpu is not None else ["## CPU (not a GPU benchmark)", ""]
    if serve is not None:
        lines += serve_section(serve, serve_source)
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------
# Charts


def write_charts(results: dict, charts_dir: str | os.PathLike) -> dict[str, Path]:
    """One PNG per module: bellm's speed-up over the fastest peer per group, log scale.

    Returns ``{module: path}``; a module without a bellm row that has a timed peer gets no chart.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    from bellm._io import atomic_path

    written = {}
    by_module: dict[str, list[dict]] = {}
    for s in summary(results):
        if s["speedup"] is not None:
            by_module.setdefault(s["module"], []).append(s)
    smoke_label = "" if is_gpu_benchmark(results) else "  [SMOKE RUN - NOT A BENCHMARK]"
    gpu = results["environment"].get("gpu") or "CPU"
    for module, entries in by_module.items():
        labels = [f"{e['group']}" + ("" if e["impl"] == "bellm" else f" [{e['impl']}]") + f"  vs {e['peer']}"
                  for e in entries]
        speedups = [e["speedup"] for e in entries]
        fig = Figure(figsize=(10, 1.2 + 0.32 * len(entries)), layout="constrained")
        ax = fig.subplots()
        y = list(range(len(entries)))[::-1]
        colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
        ax.barh(y, [s - 1 for s in speedups], left=1, color=colors)  # bars grow from 1x, left or right
        ax.set_xscale("log")
        span = 1.5 * max(max(s, 1 / s) for s in speedups)
        ax.set_xlim(1 / span, span)
        base = 2.0 if span <= 16 else 10.0
        ax.set_xticks([base**k for k in range(-12, 13) if 1 / span <= base**k <= span])
        ax.minorticks_off()
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}×"))
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(y, labels, fontsize=7)
        for yi, s in zip(y, speedups):
            # label right of the bar's end, or right of the 1x line for slower bars (which grow leftwards)
            ax.annotate(f"{_ratio(s)}×", (max(s, 1.0), yi), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=7)
        ax.set_xlabel("bellm speed-up over the fastest peer (fastest peer time ÷ bellm time; > 1 is faster)")
        ax.set_title(f"{module} — {gpu}{smoke_label}", fontsize=9)
        path = Path(charts_dir) / f"{module}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        written[module] = path
    return written


# ----------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                description="Write BENCHMARKS.md and charts from a results file.")
    p.add_argument("results", nargs="?", help="results JSON from `python -m benchmarks.run` (optional with --cpu)")
    p.add_argument("--output", default="BENCHMARKS.md", help="markdown to write (default: %(default)s)")
    p.add_argument("--charts-dir", default="benchmarks/charts", help="PNG folder (default: %(default)s)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="accept a CPU or --smoke results file; the report is then labelled as a smoke run")
    p.add_argument("--cpu", nargs="+", help="results JSON from `python -m benchmarks.bench_cpu` (one or more, "
                   "e.g. from separate sittings): adds the CPU section")
    p.add_argument("--serve", help="results JSON from `python -m benchmarks.bench_serve --output FILE`: adds the "
                   "serving table to the CPU section")
    args = p.parse_args(argv)
    if args.results is None and args.cpu is None and args.serve is None:
        p.error("give a results file from `python -m benchmarks.run`, or --cpu FILE / --serve FILE, or both")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from bellm._io import atomic_write_text

    output = Path(args.output)
    try:
        cpu = load_cpu_results(*args.cpu) if args.cpu else None
        cpu_source = ", ".join(f"`{Path(c).name}`" for c in args.cpu or [])
        serve = load_serve_results(args.serve) if args.serve else None
        results = load_results(args.results) if args.results else None
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    serve_source = f"`{Path(args.serve).name}`" if args.serve else ""
    if results is None:
        atomic_write_text(output, render_cpu_only(cpu, cpu_source, serve, serve_source))
        print(f"wrote {output} (CPU section only, {len(cpu['rows']) if cpu else 0} rows"
              f"{', serving table' if serve else ''})")
        return 0
    if not is_gpu_benchmark(results) and not args.allow_cpu:
        why = "a --smoke run" if results.get("smoke") else "not measured on a GPU (no 'gpu' in environment)"
        print(f"error: {args.results} is {why}; BENCHMARKS.md only takes numbers measured on a named GPU. "
              "Pass --allow-cpu to write a report labelled as a CPU smoke run.", file=sys.stderr)
        return 2
    charts = write_charts(results, args.charts_dir)
    rel = {m: Path(os.path.relpath(p.resolve(), output.resolve().parent)).as_posix()
           for m, p in charts.items()}
    text = render_markdown(results, source=Path(args.results).name, charts=rel)
    if cpu is not None or serve is not None:
        cpu_lines = cpu_section(cpu, cpu_source) if cpu is not None else ["## CPU (not a GPU benchmark)", ""]
        if serve is not None:
            cpu_lines += serve_section(serve, serve_source)
        text = text + "\n" + "\n".join(cpu_lines).rstrip() + "\n"
    atomic_write_text(output, text)
    print(f"wrote {output} ({len(results['rows'])} rows) and {len(charts)} chart(s) in {args.charts_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
