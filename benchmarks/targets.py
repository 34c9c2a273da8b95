"""bellm's performance targets as data, and the table of measured / target / met for one results file.

    python -m benchmarks.targets benchmarks/results.json

Each :class:`Target` names the rows of a results file (``python -m benchmarks.run`` output) that give its
measured value: a module, a regular expression matched against the group names (one table row per matching
group, so a target covers every shape the module measures), bellm's implementation and the peers it is
compared with. Three kinds of value:

- ``speedup``: the fastest timed peer's median time ÷ bellm's median time (> 1: bellm is faster; the same
  number as the ratio of tokens/s when both run the same tokens);
- ``metric``: one metric of bellm's row (``roofline_frac``, say);
- ``metric_ratio``: bellm's metric ÷ the same metric of a reference row, taken from ``ref_group`` when that
  is set (pooling GB/s ÷ the device-copy GB/s measured in the same run) or from the peers of the same group
  (bellm's peak memory ÷ the peer's).

:func:`evaluate` never raises on incomplete results: a target whose rows are missing, skipped or lack the
metric becomes a row with ``measured=None`` and a reason, so a partial run still prints every target.
Nothing here judges a smoke run: its table is labelled as such.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TARGETS", "Target", "TargetResult", "evaluate", "markdown_lines", "main"]


@dataclass(frozen=True)
class Target:
    """One ratio target. ``direction``: ``"higher"`` (met when measured >= target) or ``"lower"``."""

    name: str
    module: str
    group: str  # regular expression, re.search against each group name of the module
    kind: str  # "speedup" | "metric" | "metric_ratio"
    target: float
    peers: tuple[str, ...] = ()  # speedup / metric_ratio: the fastest timed of these is the reference
    metric: str | None = None  # metric / metric_ratio: the row key compared
    ref_group: str | None = None  # metric_ratio: exact group of the reference rows (default: the same group)
    direction: str = "higher"
    bellm: str = "bellm"


@dataclass(frozen=True)
class TargetResult:
    """One table row: ``measured`` is None when the value could not be computed (``detail`` says why)."""

    target: Target
    group: str | None
    measured: float | None
    detail: str

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        if self.target.direction == "lower":
            return self.measured <= self.target.target
        return self.measured >= self.target.target


_PADDED_SDPA = ("sdpa-flash-padded", "sdpa-cudnn-padded", "sdpa-efficient-padded", "sdpa-math-padded")

TARGETS: tuple[Target, ...] = (
    Target("attn packed bidir fwd vs varlen_attn / FA2 varlen", "attention", r"^attn fwd packed .* bidir ",
           "speedup", 1.2, peers=("varlen_attn", "flash-attn")),
    Target("attn packed bidir fwd vs best padded-mask SDPA", "attention", r"^attn fwd packed .* bidir ",
           "speedup", 3.0, peers=_PADDED_SDPA),
    Target("attn dense bidir fwd vs SDPA flash", "attention", r"^attn fwd dense .* bidir ", "speedup", 1.3,
           peers=("sdpa-flash",)),
    Target("attn dense bidir fwd vs SDPA cuDNN", "attention", r"^attn fwd dense .* bidir ", "speedup", 0.9,
           peers=("sdpa-cudnn",)),
    Target("attn bidir fwd+bwd vs FlexAttention", "attention", r"^attn fwd\+bwd .* bidir ", "speedup", 1.15,
           peers=("flex",)),
    Target("pool mean fwd, fraction of copy GB/s", "pool", r"^mean.* fwd$", "metric_ratio", 0.85,
           peers=("torch.copy_",), metric="gbps", ref_group="copy"),
    Target("pool fwd+bwd, fraction of copy GB/s", "pool", r" fwd\+bwd$", "metric_ratio", 0.85,
           peers=("torch.copy_",), metric="gbps", ref_group="copy"),
    Target("encode 16-96 tok vs HF sdpa padded, unsorted", "encode", r"^synthetic 16-96 tok$", "speedup", 2.5,
           peers=("hf-sdpa-padded",)),
    Target("encode 16-96 tok vs HF sdpa padded, length-sorted", "encode", r"^synthetic 16-96 tok$", "speedup",
           1.6, peers=("hf-sdpa-sorted",)),
    Target("encode 16-96 tok, fraction of GEMM roofline", "encode", r"^synthetic 16-96 tok$", "metric", 0.9,
           metric="roofline_frac"),
    Target("train step tokens/s vs HF sdpa padded", "train", r"^train step ", "speedup", 1.5,
           peers=("hf-sdpa-padded",)),
    Target("train step peak memory ÷ HF sdpa padded's", "train", r"^train step ", "metric_ratio", 1.0,
           peers=("hf-sdpa-padded",), metric="peak_mem_mb", direction="lower"),
)
"""bellm's ratio targets, in table order. The fwd pooling rows cover mean pooling only: last-token
pooling's forward reads one row per sequence, a latency number that a bandwidth fraction does not describe."""


# ----------------------------------------------------------------------------------------------------
# Evaluation


def _timed(row: dict) -> bool:
    return "skipped" not in row and isinstance(row.get("median_ms"), (int, float)) and row["median_ms"] > 0


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _why_not_timed(rows: list[dict], impls: tuple[str, ...]) -> str:
    """Why none of ``impls`` has a timed row among ``rows``: their skip reasons, or that no row exists."""
    reasons = [f"{r['impl']} skipped: {r['skipped']}" for r in rows if r.get("impl") in impls and "skipped" in r]
    return "; ".join(reasons) if reasons else f"no row for {' / '.join(impls)}"


def _module_note(results: dict, module: str) -> str:
    info = (results.get("modules") or {}).get(module)
    if not isinstance(info, dict):
        return f"module {module!r} not in this results file"
    note = f"module {module!r} {info.get('status', 'unknown')}"
    return note + (f": {info['error']}" if info.get("error") else "")


def _fastest(rows: list[dict], impls: tuple[str, ...]) -> dict | None:
    timed = [r for r in rows if r.get("impl") in impls and _timed(r)]
    return min(timed, key=lambda r: r["median_ms"]) if timed else None


def _value(target: Target, rows: list[dict], by_group: dict[str, list[dict]]) -> tuple[float | None, str]:
    """(measured, detail) of one target on the rows of one group."""
    bellm = next((r for r in rows if r.get("impl") == target.bellm), None)
    if bellm is None:
        return None, f"no {target.bellm} row"
    if not _timed(bellm):
        return None, f"{target.bellm} skipped: {bellm.get('skipped', 'no time')}"
    if target.kind == "metric":
        value = _number(bellm, target.metric)
        return (value, "") if value is not None else (None, f"{target.bellm} row has no {target.metric}")
    ref_rows = by_group.get(target.ref_group, []) if target.ref_group else rows
    peer = _fastest(ref_rows, target.peers)
    if peer is None:
        where = f" (group {target.ref_group!r})" if target.ref_group else ""
        return None, _why_not_timed(ref_rows, target.peers) + where
    if target.kind == "speedup":
        return peer["median_ms"] / bellm["median_ms"], f"vs {peer['impl']}"
    if target.kind == "metric_ratio":
        mine, theirs = _number(bellm, target.metric), _number(peer, target.metric)
        if mine is None or not theirs:
            return None, f"{target.metric} missing in the {target.bellm} or {peer['impl']} row"
        return mine / theirs, f"vs {peer['impl']}"
    return None, f"unknown target kind {target.kind!r}"


def evaluate(results: dict, targets: tuple[Target, ...] = TARGETS) -> list[TargetResult]:
    """One :class:`TargetResult` per (target, matching group); a target no group matches gets one row whose
    detail names the module's status. Never raises on missing or skipped rows."""
    modules: dict[str, dict[str, list[dict]]] = {}
    for row in results.get("rows") or []:
        if isinstance(row, dict) and isinstance(row.get("group"), str):
            modules.setdefault(row.get("module", "other"), {}).setdefault(row["group"], []).append(row)
    out = []
    for target in targets:
        by_group = modules.get(target.module, {})
        pattern = re.compile(target.group)
        groups = [g for g in by_group if pattern.search(g)]
        if not groups:
            note = _module_note(results, target.module)
            out.append(TargetResult(target, None, None, f"no group matching /{target.group}/ ({note})"))
        for group in groups:
            measured, detail = _value(target, by_group[group], by_group)
            out.append(TargetResult(target, group, measured, detail))
    return out


# ----------------------------------------------------------------------------------------------------
# Rendering


def _format(target: Target, value: float) -> str:
    text = f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.2g}"
    return f"{text}×" if target.kind == "speedup" or target.metric == "peak_mem_mb" else text


def _target_text(target: Target) -> str:
    sign = "≤" if target.direction == "lower" else "≥"
    return f"{sign} {_format(target, target.target)}"


def markdown_lines(results: dict, targets: tuple[Target, ...] = TARGETS) -> list[str]:
    """The targets table as markdown lines (a heading, a note for non-GPU runs, the table)."""
    env = results.get("environment") or {}
    lines = ["## Targets: measured / target / met", ""]
    if results.get("smoke") or not env.get("gpu"):
        lines += ["> Not a GPU benchmark (smoke shapes or no GPU): these values say nothing about speed.", ""]
    lines += ["| target | group | measured | target | met | detail |", "|---|---|---|---|---|---|"]
    for r in evaluate(results, targets):
        measured = "not measured" if r.measured is None else _format(r.target, r.measured)
        met = {None: "–", True: "yes", False: "**no**"}[r.met]
        detail = r.detail.replace("|", "/").replace("\n", " ")
        group = (r.group or "").replace("|", "/")
        lines.append(f"| {r.target.name} | {group} | {measured} | {_target_text(r.target)} | {met} | {detail} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.targets",
                                description="Print measured / target / met for bellm's performance targets.")
    p.add_argument("results", help="results JSON from `python -m benchmarks.run`")
    args = p.parse_args(argv)
    try:
        results = json.loads(Path(args.results).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"error: cannot read {args.results}: {e}", file=sys.stderr)
        return 2
    if not isinstance(results, dict):
        print(f"error: {args.results} is not a results file from `python -m benchmarks.run`", file=sys.stderr)
        return 2
    print("\n".join(markdown_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
