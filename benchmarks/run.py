"""Run the benchmark suite and write one results JSON.

    python -m benchmarks.run [--smoke] [--only attention,pool] [--output benchmarks/results.json]

Each module ``benchmarks/bench_<name>.py`` of :data:`MODULES` that exists is imported and its
``collect(smoke) -> list[dict]`` is called (the row convention is in ``benchmarks/README.md``). A module
that fails to import, raises, or returns a malformed row is recorded as a skipped row naming the error, and
the run goes on; in ``--smoke`` mode (CI) such a crash makes the exit status 1. The results file holds
``environment()`` (versions, GPU, driver, commit, date) and every row tagged with its module; it is written
atomically. ``python -m benchmarks.report`` turns it into BENCHMARKS.md.

``--smoke`` runs tiny shapes that finish in seconds on CPU: it checks that the suite and the report still
work and says nothing about speed. Without CUDA it sets ``TRITON_INTERPRET=1`` (unless already set) before
anything imports triton, so the kernel modules (:data:`KERNEL_MODULES`) run bellm's Triton kernels in the
interpreter; the model-level modules run with ``TRITON_INTERPRET=0``, i.e. bellm's reference path.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import math
import os
import subprocess
import sys
import time
import traceback

MODULES = ("attention", "pool", "encode", "train")
"""Benchmark modules in report order: ``benchmarks.bench_<name>``."""

KERNEL_MODULES = {"attention", "pool"}
"""In a CPU smoke run these call bellm's Triton kernels in the interpreter; the model-level modules (encode,
train) take the plain-PyTorch reference path instead, as ``tests/`` does outside ``tests/kernels/``: running
whole models through the interpreter would cost minutes and test nothing the kernel modules do not."""

SCHEMA = 1


def module_path(name: str) -> str:
    return f"benchmarks.bench_{name}"


def load_module(name: str):
    """Import ``benchmarks.bench_<name>``; None when that file does not exist (other errors propagate)."""
    path = module_path(name)
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name == path:
            return None
        raise


def row_problem(row) -> str | None:
    """Why ``row`` breaks the row convention, or None when it is well-formed."""
    if not isinstance(row, dict):
        return f"row is {type(row).__name__}, not dict"
    for key in ("group", "impl"):
        if not isinstance(row.get(key), str) or not row[key]:
            return f"row {row!r} lacks a non-empty string {key!r}"
    if "skipped" in row:
        if not isinstance(row["skipped"], str) or not row["skipped"]:
            return f"row {row['group']!r}/{row['impl']!r}: 'skipped' must be a non-empty reason string"
        return None
    for key in ("median_ms", "p20_ms", "p80_ms"):
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            return f"row {row['group']!r}/{row['impl']!r}: {key}={value!r} is not a positive finite time"
    return None


def jsonable(value):
    """Plain JSON values: numpy/torch scalars become numbers, NaN/inf None, other objects strings."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalar
        return jsonable(value.item())
    return str(value)


def error_row(name: str, what: str, exc: BaseException) -> dict:
    """A skipped row standing for a module (or one of its rows) that could not run."""
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"module": name, "group": f"{name}: {what}", "impl": "(suite)", "skipped": f"crashed: {message}",
            "error": True}


def collect_module(name: str, smoke: bool) -> tuple[str, list[dict], str | None]:
    """``(status, rows, error)`` for one module; rows are tagged ``module=name``.

    ``status`` is ``"ok"``, ``"absent"`` (no such file, no rows) or ``"crashed"`` (it failed to import,
    raised, or returned a row breaking the convention; ``error`` says how). A module's failure never raises
    here: it becomes a skipped row, so the rest of the suite still runs.
    """
    try:
        module = load_module(name)
    except Exception as e:  # any import failure is reported, not fatal
        traceback.print_exc()
        return "crashed", [error_row(name, "import failed", e)], f"{name}: import failed: {e!r}"
    if module is None:
        return "absent", [], None
    try:
        rows = list(module.collect(smoke=smoke))
    except Exception as e:
        traceback.print_exc()
        return "crashed", [error_row(name, "collect() raised", e)], f"{name}: collect() raised: {e!r}"
    out, error = [], None
    for row in rows:
        problem = row_problem(row)
        if problem is not None:
            error = error or f"{name}: malformed row: {problem}"
            bad = error_row(name, "malformed row", ValueError(problem))
            labels = (row.get("group"), row.get("impl")) if isinstance(row, dict) else (None, None)
            if all(isinstance(x, str) and x for x in labels):  # keep it in its own group's table
                bad.update(group=labels[0], impl=labels[1])
            out.append(bad)
        else:
            out.append({"module": name, **jsonable(row)})
    return ("crashed" if error else "ok"), out, error


def run_suite(names, smoke: bool, log=print) -> dict:
    """Collect every named module that exists; return the results document (not yet written)."""
    rows, errors, modules = [], [], {}
    interpreter = os.environ.get("TRITON_INTERPRET", "0") == "1"
    for name in names:
        if smoke and interpreter:  # bellm's dispatch reads the variable at call time
            os.environ["TRITON_INTERPRET"] = "1" if name in KERNEL_MODULES else "0"
        t0 = time.perf_counter()
        try:
            status, module_rows, error = collect_module(name, smoke)
        finally:
            if interpreter:
                os.environ["TRITON_INTERPRET"] = "1"
        seconds = time.perf_counter() - t0
        if error is not None:
            errors.append(error)
        modules[name] = {"status": status, "seconds": round(seconds, 3), "rows": len(module_rows),
                         "triton_interpret": interpreter and (not smoke or name in KERNEL_MODULES)}
        log(f"[benchmarks] {name}: {status}, {len(module_rows)} rows, {seconds:.1f}s"
            + (f" - {error}" if error else ""))
        rows.extend(module_rows)
        _release_memory()
    return {"schema": SCHEMA, "smoke": smoke, "environment": suite_environment(), "modules": modules,
            "errors": errors, "rows": rows}


def _release_memory() -> None:
    """Free what a finished module left behind, so the next one starts from an empty device allocator."""
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def suite_environment() -> dict:
    """``_timing.environment()`` plus whether Triton ran in its interpreter and whether tracked files differ
    from the commit (then the commit alone does not name the code that was measured)."""
    from benchmarks._timing import environment

    env = {**environment(), "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1"}
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout
        env["dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return env


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description="Run the bellm benchmark suite.")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes on whatever device is present (CI): checks the suite, judges no speed")
    p.add_argument("--only", default="",
                   help=f"comma-separated subset of {','.join(MODULES)} (default: all that exist)")
    p.add_argument("--output", default=None,
                   help="results JSON (default: benchmarks/results.json; with --smoke, results-smoke.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        print(f"error: unknown benchmark module(s) {unknown}; choose from {list(MODULES)}", file=sys.stderr)
        return 2
    if args.smoke and "triton" not in sys.modules:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")

    from bellm._io import atomic_write_json

    if args.output is None:  # a smoke run never overwrites the GPU results that BENCHMARKS.md comes from
        args.output = "benchmarks/results-smoke.json" if args.smoke else "benchmarks/results.json"
    results = run_suite(names, args.smoke)
    atomic_write_json(args.output, results)
    from benchmarks.report import summary

    for s in [] if args.smoke else summary(results):  # a first look; BENCHMARKS.md comes from the report
        if s["peer"] is not None:
            print(f"  {s['module']}: {s['group']} [{s['impl']}]: {s['median_ms']:.4g} ms, "
                  f"{s['speedup']:.3g}x vs {s['peer']} ({s['peer_ms']:.4g} ms)")
    timed = sum("skipped" not in r for r in results["rows"])
    print(f"[benchmarks] wrote {args.output}: {len(results['rows'])} rows ({timed} timed), "
          f"{len(results['errors'])} module error(s)")
    return 1 if results["errors"] and args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
