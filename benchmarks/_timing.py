"""Timing helpers shared by every benchmark module.

``measure(fn)`` warms up, then times ``fn`` with ``triton.testing.do_bench`` on CUDA (medians and 20/80 quantiles
of device time) or with a synchronised ``perf_counter`` loop on CPU. Nothing here asserts on speed.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import subprocess
import time

import torch


def measure(
    fn, *, device: torch.device | str = "cuda", warmup_ms: int = 25, rep_ms: int = 100, min_reps: int = 3
) -> dict:
    """Return ``{"median_ms", "p20_ms", "p80_ms"}`` for one call of ``fn``."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing

        p20, median, p80 = triton.testing.do_bench(
            fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.2, 0.5, 0.8]
        )
        return {"median_ms": median, "p20_ms": p20, "p80_ms": p80}
    fn()  # warm-up
    times = []
    deadline = time.perf_counter() + rep_ms / 1000
    while len(times) < min_reps or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return summarize(times)


def summarize(times_ms: list[float]) -> dict:
    """``{"median_ms", "p20_ms", "p80_ms"}`` of host-timed samples (at least one).

    Quantiles are "inclusive", so they stay within the observed times: the default "exclusive" method
    extrapolates from few noisy samples, even below zero.
    """
    if not times_ms:
        raise ValueError("summarize() needs at least one timed sample")
    times = sorted(times_ms)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) >= 2 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p20_ms": q[1], "p80_ms": q[7]}


def environment() -> dict:
    """Versions, device name, git commit and date for a results file."""
    import triton

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


_TABLE_ORDER = ("group", "impl", "median_ms", "p20_ms", "p80_ms", "tflops", "gbps", "tokens_per_s",
                "roofline_frac", "peak_mem_mb")


def markdown_table(rows: list[dict]) -> str:
    """The rows of a benchmark module as one markdown table: the usual columns first, then any others."""
    columns = [c for c in _TABLE_ORDER if any(c in r for r in rows)]
    columns += sorted({c for r in rows for c in r} - set(columns) - {"note", "skipped"})
    columns += [c for c in ("note", "skipped") if any(c in r for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            cells.append("" if value is None else (f"{value:,.4g}" if isinstance(value, float) else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def script_main(collect, description: str) -> None:
    """``python -m benchmarks.bench_<name> [--smoke]``: run ``collect`` and print the environment and the table."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, seconds on CPU (never judges speed)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = collect(smoke=args.smoke)
    print(environment())
    print(markdown_table(rows))
    print(f"(total {time.perf_counter() - t0:.0f} s)")
