"""RESULTS.md from the stage JSON files: ``results_template.md`` holds the fixed text, the functions here write
the parts that depend on the run (tables, readings). Works on a partial run; nothing is typed by hand."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

import bellm
from bellm._io import atomic_write_text
from bellm.common import format_score
from bellm.sts_data import TASKS
from experiments.settings import PAPER_DELTA, PAPER_ROWS
from experiments.stages import Run, choose_depths
from experiments.stats import headline_numbers, pair_bootstrap

__all__ = ["write_report", "format_plan", "reading", "turning_point_reading"]

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("results_template.md")
DOC = "[docs/bidirectional.md](docs/bidirectional.md)"  # the project's page on the facts the reading cites
# a link into docs/ as the report writes it, relative to the repository root (see relink)
REPO_LINK = re.compile(r"\[([^\]]+)\]\((docs/[^)\s]+)\)")
SHORT = {"STSBenchmark": "STS-B", "SICKRelatedness": "SICK-R"}


def write_report(run: Run, path: Path | None = None) -> Path:
    """Write RESULTS.md (default ``<run>/RESULTS.md``) and its curve PNG under ``results_assets/``."""
    path = Path(path) if path else run.out / "RESULTS.md"
    s = run.settings
    status = _status(run)
    plan = run.done("plan")
    cmds = (
        json.loads((run.out / "commands.json").read_text()) if (run.out / "commands.json").is_file() else []
    )
    done = [run.done(n) or {} for n in status["names"]]
    wall = sum(r.get("seconds", 0.0) for r in done)
    text = TEMPLATE.read_text(encoding="utf-8").format(
        smoke_banner=_smoke_banner(run),
        status=f"{status['done']} of {status['total']} stages done" + _partial_note(run, status),
        model=_model_line(run.done("base")),
        results=_results(run, path),
        train_data=run.train_data.name,
        steps=run.total_steps(),
        batch_size=s.batch_size,
        grad_accum=s.grad_accum,
        lr=s.lr,
        warmup_steps=s.warmup_steps,
        lora_r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        max_length=s.max_length,
        seed_note=(
            f"seeds {s.seeds} for every arm" + _long_note(run)
            if s.depth_study
            else f"seeds {s.seeds} (headline pair), {s.seeds[0]} (other arms)"
        ),
        sampled=f"; **only {s.eval_max_pairs} sampled pairs per set**" if s.eval_max_pairs else "",
        commands=_commands_block(cmds),
        versions=", ".join(f"{k} {v}" for k, v in _versions().items()),
        throughput=(
            f"- Throughput measured by the plan stage: encode {plan['encode_sentences_per_s']:.1f} sentences/s, "
            f"train {plan['train_seconds_per_step']:.2f} s/step ({plan['cpu_threads']} torch threads)\n"
            if plan
            else ""
        ),
        wall=_hms(wall),
        cpu=_cpu_note(done),
    )
    atomic_write_text(path, relink(text, path.parent))
    return path


def relink(text: str, folder: Path) -> str:
    """The report's links into ``docs/`` (written relative to the repository root) made to resolve from the
    report's ``folder``: relative to it when it lies inside the repository, else (a run directory elsewhere)
    plain text naming the file in the repository, as no relative link reaches it from there."""
    folder = folder.resolve()
    if not folder.is_relative_to(REPO):
        return REPO_LINK.sub(lambda m: f"`{m.group(2)}` of the bellm repository", text)
    up = Path(os.path.relpath(REPO, folder)).as_posix()
    return text if up == "." else REPO_LINK.sub(lambda m: f"[{m.group(1)}]({up}/{m.group(2)})", text)


def _cpu_note(done: list[dict]) -> str:
    """``; CPU time at most ...``: each timed stage's wall time x its torch threads, summed (an upper bound, as
    a thread may wait); over the stages that record their threads, saying so when not all do."""
    timed = [r for r in done if "seconds" in r]
    known = [r for r in timed if "torch_threads" in r]
    if not known:
        return ""
    cpu = _hms(sum(r["seconds"] * r["torch_threads"] for r in known))
    scope = (
        "" if len(known) == len(timed) else f" for the {len(known)} of {len(timed)} stages that record them"
    )
    return f"; CPU time at most {cpu} (each stage's wall time x its torch threads{scope})"


def _commands_block(cmds: list[dict]) -> str:
    """The distinct commands of ``commands.json`` in first-use order, each with how often and when it ran.
    ``--stop-after N`` only bounds a sitting, so its value is shown as ``<minutes>`` and such sittings count
    as one command."""
    seen: dict[str, list[str]] = {}
    for c in cmds:
        line = re.sub(r"--stop-after[ =]\S+", "--stop-after <minutes>", c["command"])
        seen.setdefault(line, []).append(c.get("started", ""))
    lines = []
    for line, started in seen.items():
        when = started[0] if len(started) == 1 else f"{started[0]} to {started[-1]}"
        runs = "run once" if len(started) == 1 else f"run {len(started)} times"
        lines.append(f"{line}    # {runs}, {when}".rstrip(", "))
    return "\n".join(["```", *lines, "```"])


def _partial_note(run: Run, status: dict) -> str:
    if status["done"] == status["total"]:
        return ""
    if run.settings.depth_study:
        return (
            f" (**partial run**: {status['total'] - status['done']} stages not run yet; only what the finished "
            "stages support is shown)"
        )
    return " (**partial run**: the missing rows read 'not run')"


def _long_note(run: Run) -> str:
    s = run.settings
    return (
        f"; the longer budget: {s.long_multiple} x {run.total_steps()} steps, causal and the best depth, seeds "
        f"{s.seeds[: s.long_seeds]}; every test pair"
        + (f" (at most {s.full_max_pairs} per set)" if s.full_max_pairs else "")
        + f" for seed {s.seeds[0]} of both"
    )


def _paragraphs(lines: list[str]) -> str:
    """Lines joined into a block that ends with a blank line (empty for no lines)."""
    return "".join(line + "\n" for line in lines) + "\n" if lines else ""


def _smoke_banner(run: Run) -> str:
    s = run.settings
    if not s.smoke:
        return ""
    return _paragraphs(
        [
            f"> **SMOKE RUN — these numbers mean nothing.** {s.steps} training step(s) of {s.batch_size} "
            f"triplets, {s.eval_max_pairs} pairs per STS set, {s.tp_pairs} dev pairs for the curve: this checks "
            "that the pipeline runs end to end, not the paper's claim."
        ]
    )


def _model_line(base: dict | None) -> str:
    if not base:
        return ""
    parameters = format(base["parameters"], ",") if base["parameters"] else "?"
    return _paragraphs(
        [
            f"Model: {base['source']} ({base['architecture']}, {base['num_layers']} layers, hidden "
            f"{base['hidden_size']}, {base['heads']} heads / {base['kv_heads']} KV heads, {parameters} parameters)."
        ]
    )


def _results(run: Run, path: Path) -> str:
    """Sections 1 to 4 (turning point, untrained rows, trained arms, reading); empty before the turning point."""
    tp = run.done("turning_point")
    if not tp:
        return ""
    d = tp["design"]
    if run.done("sweep"):  # the depth study's sweep is a stage of its own
        tp = {**tp, "curve": {**tp["curve"], "sweep": run.done("sweep")["sweep"]}}
    asset_dir = path.parent / "results_assets"
    asset_dir.mkdir(parents=True, exist_ok=True)
    png = asset_dir / "turning_point.png"
    shutil.copyfile(run.resolve(tp["png"]), png)
    if run.settings.depth_study:
        from experiments.depth_report import depth_sections

        sections = [
            _turning_point_section(tp, f"results_assets/{png.name}"),
            _untrained_table(run, d, only_done=True),
            _trained_table(run, d, only_done=True),
            depth_sections(run, d, tp, asset_dir),
        ]
        return "".join(line + "\n" for section in sections for line in section)
    headline = headline_numbers(run, d)
    headline["bootstrap"] = pair_bootstrap(run, d, headline["seeds"])
    sections = [
        _turning_point_section(tp, f"results_assets/{png.name}"),
        _untrained_table(run, d),
        _trained_table(run, d),
        [
            "## 4. Reading",
            "",
            *turning_point_reading(tp),
            *(x for line in reading(headline) for x in (line, "")),
        ],
        [*_other_readings(run, d), ""],
    ]
    return "".join(line + "\n" for section in sections for line in section)


def _turning_point_section(tp: dict, png: str) -> list[str]:
    d, curve = tp["design"], tp["curve"]
    data = curve.get("data", {})
    scores = curve["scores"]
    lines = [
        "## 1. Turning point of the untrained model",
        "",
        f"![per-layer STS curve]({png})",
        "",
        f"Per-layer Spearman x 100 on {data.get('task')} {data.get('split')} ({data.get('pairs')} pairs, "
        f"{data.get('source')} text), last-token pooling under the BeLLM prompt, causal model in one pass; "
        f"norm treatment: {curve.get('layer_norm_meaning')}. Undefined points (constant embeddings, e.g. "
        "layer 0: the last token is always the closing quote) are gaps.",
        "",
        f"- turning point: layer **{d['turning_point']}** of {d['num_layers']} (drop after it: "
        f"{format_score(curve.get('drop_after_turning_point'))} points)",
        f"- BeLLM's k = **{d['k_bellm']}**: {d['k_rule']}",
        f"- second depth k = **{d['k_quarter']}**: {d['k_quarter_rule']}",
        "",
        *_one_row_table("layer", [str(i) for i in range(len(scores))], scores),
    ]
    if curve.get("sweep"):
        sweep = curve["sweep"]
        lines += [
            "Untrained sweep, final embedding with layers >= k bidirectional (same dev pairs):",
            "",
            *_one_row_table("from_layer k", list(sweep), list(sweep.values())),
        ]
    return lines


def _one_row_table(head: str, columns: list[str], values: list) -> list[str]:
    return [
        f"| {head} | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        "| Spearman | " + " | ".join(format_score(v) for v in values) + " |",
        "",
    ]


def _table_head(first: str = "") -> list[str]:
    return [
        "| " + " | ".join([first, *(SHORT.get(t, t) for t in TASKS), "Avg."]) + " |",
        "|" + "|".join(["---"] * (len(TASKS) + 2)) + "|",
    ]


def _row(name: str, scores: dict, average) -> str:
    return (
        "| " + " | ".join([name, *(format_score(scores.get(t)) for t in TASKS), format_score(average)]) + " |"
    )


def _untrained_table(run: Run, d: dict, only_done: bool = False) -> list[str]:
    """The untrained rows; missing ones read 'not run', or with ``only_done`` are left out (and counted)."""
    lines = ["## 2. Untrained model (no training)", "", *_table_head()]
    missing = 0
    for r in run.untrained_rows(d):
        res = run.done(f"untrained-{r['name']}")
        if res:
            lines.append(_row(r["label"], res["scores"], res["average"]))
        elif only_done:
            missing += 1
        else:
            lines.append(f"| {r['label']} | not run |")
    if only_done and missing == len(run.untrained_rows(d)):
        return ["## 2. Untrained model (no training)", "", "Not run yet.", ""]
    return lines + [""] + ([f"Not run yet: {missing} of these rows.", ""] if missing else [])


def _trained_table(run: Run, d: dict, only_done: bool = False) -> list[str]:
    """Every trained arm per seed, the mean over seeds of the arms with several, and the paper's rows; a
    missing evaluation reads 'not run', or with ``only_done`` is left out (and counted)."""
    lines = ["## 3. Trained arms (same data, steps, LoRA, seed)", "", *_table_head()]
    missing = 0
    for a in run.arms(d):
        per_seed = []
        for seed in a["seeds"]:
            res = run.done(f"eval-{a['name']}-seed{seed}")
            if res is None:
                missing += 1
                if not only_done:
                    lines.append(f"| {a['label']}, seed {seed} | not run |")
                continue
            per_seed.append(res)
            lines.append(_row(f"{a['label']}, seed {seed}", res["scores"], res["average"]))
        if len(per_seed) >= 2:
            mean = {t: _mean([r["scores"][t] for r in per_seed]) for t in TASKS}
            lines.append(
                _row(
                    f"**{a['label']}, mean of {len(per_seed)} seeds**",
                    mean,
                    _mean([r["average"] for r in per_seed]),
                )
            )
    if only_done and missing:
        note = f"Not run yet: {missing} (arm, seed) evaluations of the grid."
        # the table head alone would be a table of empty cells
        lines = lines[:2] + [note] if len(lines) == 4 else lines + ["", note]
    lines += [
        "",
        "For scale only (LLaMA-2-7B, full AllNLI, 4 GPUs; the BeLLM paper), not comparable in size or data:",
        "",
        *_table_head(),
        *("| " + " | ".join([name, *(f"{v:.2f}" for v in vals)]) + " |" for name, vals in PAPER_ROWS.items()),
    ]
    return lines + [""]


def _mean(values: list) -> float | None:
    """The mean, or None when any value is undefined."""
    return float(np.mean(values)) if all(v is not None for v in values) else None


def turning_point_reading(tp: dict) -> list[str]:
    """Claim (a) in one sentence, from the curve of the untrained causal model."""
    d, curve = tp["design"], tp["curve"]
    t, L = d["turning_point"], d["num_layers"]
    scores, drop = curve["scores"], curve.get("drop_after_turning_point") or 0.0
    if t >= L or drop <= 0:
        return [
            f"**Claim (a) does not hold here**: the per-layer curve peaks at the last layer ({L}); there is no "
            "turning point inside the stack.",
            "",
        ]
    return [
        "**Claim (a) holds at this scale**: the per-layer STS curve of the untrained causal model peaks at "
        f"layer {t} ({format_score(scores[t])}) and falls by {drop:.2f} points to the last layer "
        f"({L}: {format_score(scores[L])}), on STS-B dev.",
        "",
    ]


def _verdict(deltas: list[float]) -> str:
    n, ahead, mean = len(deltas), sum(d > 0 for d in deltas), float(np.mean(deltas))
    if ahead == n:
        return (
            "**The direction of the paper's claim holds at this scale**: BeLLM beats causal on the average in "
            f"all {n} seed(s)"
        )
    if mean > 0:
        return (
            "**The direction is not consistent**: BeLLM is ahead on the average over seeds but not in every "
            f"seed ({ahead} of {n})"
        )
    return (
        "**The direction of the paper's claim does not hold at this scale**: BeLLM is not ahead of causal on "
        f"the average ({ahead} of {n} seeds ahead)"
    )


def reading(headline: dict) -> list[str]:
    """The automatically worded reading of the headline comparison (BeLLM - causal, per seed), one statement
    per list item."""
    deltas = headline["deltas"]
    if not deltas:
        return ["The headline comparison is not complete yet (a causal or BeLLM seed is missing)."]
    mean = float(np.mean(deltas))
    lines = [
        f"{_verdict(deltas)}; BeLLM - causal = {mean:+.2f} points on the 7-set average (per seed: "
        f"{', '.join(f'{d:+.2f}' for d in deltas)}; range {min(deltas):+.2f} to {max(deltas):+.2f}). "
        f"The paper reports {PAPER_DELTA:+.2f} (86.29 vs 85.96, LLaMA-2-7B, a different training run per model)."
    ]
    lines += _noise_reading(deltas, headline["causal_spread"])
    k, L = headline.get("k"), headline.get("num_layers")
    if k is not None and L is not None:
        lines.append(
            f"Why the difference can only be small here: BeLLM makes layers {k}..{L - 1} bidirectional; with "
            f"last-token pooling the last of them cannot change the embedding ({DOC}, section 1), so only "
            f"{L - k - 1} layer(s) of {L} can act on it."
        )
    if headline.get("bootstrap"):
        lines.append(_bootstrap_reading(headline["bootstrap"]))
    return lines


def _noise_reading(deltas: list[float], spread: float | None) -> list[str]:
    """The seed-to-seed spread and the standard error of the per-seed differences."""
    mean, n = float(np.mean(deltas)), len(deltas)
    if n < 2:
        return [
            "Only one seed is complete, so there is no seed-to-seed spread yet; treat the difference as "
            "unmeasured noise."
        ]
    lines = []
    if spread is not None:
        size = "larger than" if abs(mean) > spread else "within"
        lines.append(
            f"The seed-to-seed spread of the causal arm's average is {spread:.2f} points (max - min over {n} "
            f"seeds); the mean difference is {size} that spread. The comparison is paired, though: both arms of "
            "a seed share the data order and the LoRA initialisation, so the per-seed differences below are the "
            "relevant noise, not the spread."
        )
    sd = float(np.std(deltas, ddof=1))
    se = sd / math.sqrt(n)
    lines.append(
        f"Per-seed differences: standard deviation {sd:.2f}, standard error of the mean {se:.2f} ({n} seeds): "
        f"mean {mean:+.2f} +- {se:.2f}."
    )
    return lines


def _bootstrap_reading(boot: dict) -> str:
    pairs = f"{boot['pairs_per_task']} sampled pairs per set" if boot["pairs_per_task"] else "every pair"
    inside = boot["lo"] <= 0.0 <= boot["hi"]
    paper_inside = boot["lo"] <= PAPER_DELTA <= boot["hi"]
    return (
        f"Test-pair sampling ({pairs}): a paired bootstrap over the evaluated pairs ({boot['n_boot']} resamples, "
        "the same pairs for both arms and every seed) puts the mean difference between "
        f"{boot['lo']:+.2f} and {boot['hi']:+.2f} (95%); {100 * boot['share_le_0']:.1f}% of resamples are <= 0, "
        f"so the difference is {'not ' if inside else ''}distinguishable from zero by the choice of test pairs "
        f"alone (seed noise comes on top). The paper's difference, {PAPER_DELTA:+.2f}, lies "
        f"{'inside' if paper_inside else 'outside'} that interval."
    )


def identity_difference(run: Run) -> str | None:
    """How far the untrained ``from_layer=-1`` last-token row is from untrained causal, in words (``"gives
    exactly the causal scores on every set"`` or ``"differs from causal by at most 3e-05 points on any set"``),
    or None before both rows are done or when no set's score is defined for both."""
    c, i = run.done("untrained-causal"), run.done("untrained-identity-last")
    if not (c and i):
        return None
    worst = max(
        (
            abs(c["scores"][t] - i["scores"][t])
            for t in TASKS
            if c["scores"][t] is not None and i["scores"][t] is not None
        ),
        default=None,
    )
    if worst is None:
        return None
    if worst == 0.0:
        return "gives exactly the causal scores on every set"
    return f"differs from causal by at most {worst:.2g} points on any set"


def _other_readings(run: Run, d: dict) -> list[str]:
    """One bullet per comparison besides the headline: the identity, untrained rows, the other trained arms."""
    out = []
    identity = identity_difference(run)
    if identity is not None:
        out.append(
            f"- Identity ({DOC}, section 1): `from_layer=-1` with last-token pooling {identity}, so it is the "
            "causal model and is not trained as an arm."
        )
    c = run.done("untrained-causal")
    ub, ua = run.done("untrained-all-bidirectional"), run.done(f"untrained-bellm-k{d['k_bellm']}")
    if c and ub and ub["average"] is not None and c["average"] is not None:
        out.append(
            f"- Untrained, all-bidirectional averages {format_score(ub['average'])} vs causal "
            f"{format_score(c['average'])}; bidirectional from k={d['k_bellm']}: "
            f"{format_score(ua['average']) if ua else 'not run'} ({DOC}, section 4: without training, "
            "bidirectionality low in the stack destroys the embedding)."
        )
    cm, lm = run.done("untrained-causal-mean"), run.done("untrained-last-layer-mean")
    if cm and lm and cm["average"] is not None and lm["average"] is not None:
        out.append(
            f"- Untrained, mean pooling: last layer bidirectional {format_score(lm['average'])} vs causal "
            f"{format_score(cm['average'])} ({lm['average'] - cm['average']:+.2f}): the last layer's "
            "bidirectionality alone, where the pooling can see it."
        )
    return out + _other_trained_readings(run, d)


def _other_trained_readings(run: Run, d: dict) -> list[str]:
    out = []
    seed = run.settings.seeds[0]
    tc = run.done(f"eval-causal-seed{seed}")
    for arm in run.arms(d)[2:]:
        r = run.done(f"eval-{arm['name']}-seed{seed}")
        if not (tc and r and r["average"] is not None and tc["average"] is not None):
            continue
        caveat = ""
        control = run.done(f"eval-causal-mean-seed{seed}")
        if arm["name"] == "last-layer-mean" and control and control["average"] is not None:
            caveat = (
                f"; against the causal mean-pooling control {format_score(control['average'])}: "
                f"{r['average'] - control['average']:+.2f}, the last layer's bidirectionality alone"
            )
        elif arm["pooling"] != "last":
            caveat = "; the pooling differs too (mean, not last token)"
        out.append(
            f"- Trained, {arm['label']}: {format_score(r['average'])} vs causal {format_score(tc['average'])} "
            f"({r['average'] - tc['average']:+.2f}, seed {seed}, one seed: no spread{caveat})."
        )
    return out


def _status(run: Run) -> dict:
    """Stage names of the whole run and how many are done (before the turning point the total is counted on a
    placeholder design)."""
    names = ["base", "plan", "turning_point"]
    tp = run.done("turning_point")
    if tp:
        names += [n for n, _ in run.jobs(tp["design"], for_estimate=True)]
        total = len(names)
    elif run.settings.depth_study and run.done("base"):
        L = run.done("base")["num_layers"]
        total = len(names) + len(run.jobs(choose_depths([0.0] * (L + 1), L - 2, L), for_estimate=True))
    else:
        total = len(names) + 4 + 2 * (2 * len(run.settings.seeds) + 3)
    return {"names": names, "done": sum(run.done(n) is not None for n in names), "total": total}


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def format_plan(run: Run, est: dict) -> str:
    """The measured throughput and the wall-time estimate of the run, per stage group."""
    p, s = run.plan(), run.settings
    lines = [
        f"bellm reproduce: {run.out}" + ("  [SMOKE]" if s.smoke else ""),
        f"  measured: encode {p['encode_sentences_per_s']:.1f} sentences/s, train {p['train_seconds_per_step']:.2f} "
        f"s/step (batch {s.batch_size} x accum {s.grad_accum} triplets, {p['train_tokens_per_s']:.0f} tokens/s), "
        f"{p['cpu_threads']} torch threads",
        f"  {p['eval_unique_sentences']} unique sentences per 7-set evaluation; {run.total_steps()} steps per arm",
    ]
    groups: dict[str, float] = {}
    for name, sec in est["stages"].items():
        key = name.split("-")[0]
        groups[key] = groups.get(key, 0.0) + sec
    lines += [f"    {key:<14} {_hms(sec):>8}" for key, sec in groups.items()]
    if s.depth_study:
        eval_s = run.stage_seconds("eval-", p)
        per_multiple = [
            2
            * s.long_seeds
            * (m * run.total_steps() * p["train_seconds_per_step"] + p["train_setup_s"] + eval_s)
            for m in range(1, 5)
        ]
        lines.append(
            f"  longer budget (causal + best depth, {s.long_seeds} seeds; set: {s.long_multiple}x): "
            + ", ".join(f"{m}x {_hms(sec)}" for m, sec in enumerate(per_multiple, 1))
        )
    lines.append(
        f"  estimated full run: {_hms(est['total_s'])}; remaining: {_hms(est['remaining_s'])} "
        f"(one process with {p['cpu_threads']} torch threads on this machine)"
    )
    return "\n".join(lines)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "peft", "triton", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    out["bellm"] = bellm.__version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    out["bellm_commit"] = commit or "?"
    return out
