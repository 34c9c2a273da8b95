"""Merge the results files of several ``python -m benchmarks.run`` processes into one results file.

    python -m benchmarks.merge --output results.json part1.json part2.json ... \\
        [--missing "encode=timed out after 90 s"] [--commit abc1234]

A time-boxed run (``benchmarks/gpu_check.sh``) runs each module, or each half of one, in its own process
under its own time limit; this puts their rows back into one file that ``python -m benchmarks.report`` and
``python -m benchmarks.targets`` read. Rows keep their order within a module; modules follow
``benchmarks.run.MODULES``. A module that ran in several parts gets its seconds and row counts summed and the
worst status. ``--missing MODULE=REASON`` records a part that wrote no file (it timed out or crashed): a skipped
row naming the reason, the module's status and an entry in ``errors``, so the report and the targets table show
the gap instead of silently leaving it out. ``--commit`` names the commit when the run had no git checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.run import MODULES, SCHEMA


def _module_order(name: str) -> int:
    return MODULES.index(name) if name in MODULES else len(MODULES)


def _merge_status(old: dict, new: dict) -> dict:
    """One ``modules`` entry for a module measured in two parts."""
    ok = old.get("status") == "ok" and new.get("status") == "ok"
    merged = {**old, "status": "ok" if ok else next(s["status"] for s in (old, new) if s.get("status") != "ok")}
    for key in ("seconds", "rows"):
        if isinstance(old.get(key), (int, float)) and isinstance(new.get(key), (int, float)):
            merged[key] = round(old[key] + new[key], 3)
    merged["triton_interpret"] = bool(old.get("triton_interpret") or new.get("triton_interpret"))
    return merged


def merge(parts: list[dict], missing: list[tuple[str, str]] = (), commit: str | None = None,
          environment: dict | None = None) -> dict:
    """One results document from ``parts`` (each a ``benchmarks.run`` results dict) plus ``missing``
    ``(module, reason)`` pairs. ``environment`` is used when no part has one (every part failed)."""
    env = next((dict(p["environment"]) for p in parts if p.get("environment")), dict(environment or {}))
    if commit and env.get("commit") in (None, "", "unknown"):
        env["commit"] = commit
    modules: dict[str, dict] = {}
    rows: list[dict] = []
    errors: list[str] = []
    for part in parts:
        for name, info in (part.get("modules") or {}).items():
            modules[name] = _merge_status(modules[name], info) if name in modules else dict(info)
        rows += part.get("rows") or []
        errors += part.get("errors") or []
    for name, reason in missing:
        info = modules.get(name)
        modules[name] = {**(info or {"rows": 0}), "status": "partial" if info else "not run", "error": reason}
        rows.append({"module": name, "group": f"{name}: not measured", "impl": "(suite)", "skipped": reason,
                     "error": True})
        errors.append(f"{name}: {reason}")
    rows.sort(key=lambda r: _module_order(r.get("module", "")))  # stable: order within a module is kept
    ordered = dict(sorted(modules.items(), key=lambda kv: _module_order(kv[0])))
    return {"schema": SCHEMA, "smoke": any(p.get("smoke") for p in parts), "environment": env,
            "modules": ordered, "errors": errors, "rows": rows}


def _missing(text: str) -> tuple[str, str]:
    name, sep, reason = text.partition("=")
    if not sep or not name.strip() or not reason.strip():
        raise argparse.ArgumentTypeError(f"--missing {text!r}: write MODULE=REASON, e.g. 'encode=timed out'")
    return name.strip(), reason.strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.merge", description=__doc__.splitlines()[0])
    p.add_argument("parts", nargs="*", help="results files from `python -m benchmarks.run`")
    p.add_argument("--output", required=True, help="merged results JSON to write")
    p.add_argument("--missing", action="append", type=_missing, default=[], metavar="MODULE=REASON",
                   help="a part that wrote no results file, and why (repeatable)")
    p.add_argument("--commit", help="git commit to record when the parts could not read one")
    args = p.parse_args(argv)
    parts = []
    for path in args.parts:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            print(f"error: cannot read {path}: {e}", file=sys.stderr)
            return 2
        if not isinstance(data, dict) or "rows" not in data:
            print(f"error: {path} is not a results file from `python -m benchmarks.run`", file=sys.stderr)
            return 2
        parts.append(data)
    environment = None
    if not parts:  # every part failed: still name the machine the run was on
        from benchmarks.run import suite_environment

        environment = suite_environment()
    from bellm._io import atomic_write_json

    merged = merge(parts, args.missing, args.commit, environment)
    atomic_write_json(args.output, merged)
    timed = sum("skipped" not in r for r in merged["rows"])
    print(f"[merge] wrote {args.output}: {len(parts)} part(s), {len(merged['rows'])} rows ({timed} timed), "
          f"{len(merged['errors'])} error(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
