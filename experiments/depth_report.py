"""The depth study's sections of RESULTS.md (:mod:`experiments.depth_study`): paired differences against causal,
Δ(k) as a figure and a table, the longer budget, the sampled-vs-every-pair check and the reading. Every number
comes from finished stages; a comparison without a finished pair is left out, never shown as an empty row."""

from __future__ import annotations

from pathlib import Path

from bellm.common import format_score
from bellm.sts_data import TASKS
from experiments.depth_study import depth_arms, long_arms
from experiments.report import DOC, SHORT, identity_difference
from experiments.stages import Run
from experiments.stats import bootstrap, paired_comparison, subset_average, verdict

__all__ = ["depth_sections", "comparisons", "delta_vs_k_figure"]

_POOLING = {"last": "last-token pooling", "mean": "mean pooling"}


def _pm(mean: float | None, se: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:+.2f}" + (f" ± {se:.2f}" if se is not None else "")


def _interval(pair) -> str:
    return f"[{pair[0]:+.2f}, {pair[1]:+.2f}]" if pair else "n/a (1 seed)"


def _score_interval(boot: dict | None) -> str:
    """A bootstrap interval of a score (no sign)."""
    return f"[{boot['lo']:.2f}, {boot['hi']:.2f}]" if boot else "n/a"


def comparisons(run: Run, d: dict) -> list[tuple[str, dict]]:
    """``(label, paired_comparison)`` of every arm against causal, and of the mean-pooling pair against each
    other, over the arms' seeds; only those with at least one finished pair."""
    arms = {a["name"]: a for a in run.arms(d)}
    wanted = [(a, "causal") for a in arms if a != "causal"] + [("last-layer-mean", "causal-mean")]
    out = []
    for name, ref in wanted:
        comp = paired_comparison(run, name, ref, arms[name]["seeds"])
        if comp["seeds"]:
            out.append((f"{arms[name]['label']} − {arms[ref]['label']}", comp))
    return out


def _paired_tables(comps: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "## 4. Paired differences (same seed: same data order and LoRA initialisation)",
        "",
        "Mean over paired seeds of the 7-set average difference, its standard error (SE) and two-sided 95% t "
        "interval over seeds, the seeds ahead, and the paired bootstrap over the evaluated test pairs (1000 "
        "resamples, the same pairs for both arms and every seed). Verdict: *helps* / *hurts* when both intervals "
        "exclude zero on the same side (at least 3 seeds), else *indistinguishable*; *undecided* below 3 seeds.",
        "",
        "| comparison | paired seeds | mean Δ ± SE | 95% t interval | seeds ahead | test-pair bootstrap 95% | "
        "verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, c in comps:
        boot = c["bootstrap"]
        lines.append(
            f"| {label} | {', '.join(map(str, c['seeds']))} | {_pm(c['mean'], c['se'])} | "
            f"{_interval(c['t_interval'])} | {c['ahead']} of {len(c['seeds'])} | "
            f"{_interval((boot['lo'], boot['hi'])) if boot else 'n/a'} | {verdict(c)} |"
        )
    lines += [
        "",
        "Per set (mean paired Δ ± SE over the same seeds):",
        "",
        "| comparison | " + " | ".join(SHORT.get(t, t) for t in TASKS) + " | Avg. |",
        "|" + "|".join(["---"] * (len(TASKS) + 2)) + "|",
    ]
    for label, c in comps:
        cells = [_pm(c["per_set"][t]["mean"], c["per_set"][t]["se"]) for t in TASKS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_pm(c['mean'], c['se'])} |")
    return lines + [""]


def delta_vs_k_figure(points: list[dict], turning_point: int, num_layers: int, path: Path) -> Path:
    """Δ(k): the trained paired difference against causal (mean ± SE over seeds; points without an SE drawn
    hollow; each seed's difference as a small grey dot beside it) for each depth ``k``, with the untrained
    turning point marked. ``points``: dicts with ``k``, ``mean``, ``se`` (None below 2 seeds), ``n``, ``deltas``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.axhline(0.0, color="0.5", lw=1)
    ax.axvline(
        turning_point,
        color="tab:red",
        ls="--",
        lw=1,
        label=f"untrained turning point (layer {turning_point})",
    )
    for i, p in enumerate(points):
        ax.scatter(
            [p["k"] + 0.35] * len(p["deltas"]),
            p["deltas"],
            s=10,
            color="0.55",
            zorder=1,
            label="per seed" if i == 0 else None,
        )
        filled = p["se"] is not None
        ax.errorbar(
            p["k"],
            p["mean"],
            yerr=p["se"] if filled else None,
            fmt="o",
            color="tab:blue",
            mfc="tab:blue" if filled else "white",
            capsize=4,
        )
        ax.annotate(
            f"n={p['n']}", (p["k"], p["mean"]), textcoords="offset points", xytext=(-30, 4), fontsize=8
        )
    ax.set_xlim(-4, num_layers + 1)
    ax.set_xlabel("k (layers k..L-1 bidirectional)")
    ax.set_ylabel("trained Δ vs causal (7-set avg., Spearman x 100)")
    ax.set_title("Δ(k): mean ± SE over paired seeds")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _delta_k(run: Run, d: dict, tp: dict, comps: dict, asset_dir: Path) -> list[str]:
    L, sweep = d["num_layers"], tp["curve"].get("sweep") or {}
    points = []
    for arm in sorted(depth_arms(run, d), key=lambda a: a["from_layer"]):
        c = comps.get(arm["name"])
        if c is not None:
            points.append(
                {
                    "k": arm["from_layer"],
                    "mean": c["mean"],
                    "se": c["se"],
                    "n": len(c["seeds"]),
                    "deltas": c["deltas"],
                    "c": c,
                }
            )
    lines = ["## 5. Δ(k): where bidirectionality can act", ""]
    if not points:
        return lines + ["No depth has a finished paired seed yet.", ""]
    png = delta_vs_k_figure(points, d["turning_point"], L, asset_dir / "delta_vs_k.png")
    untrained_causal = sweep.get(str(L))
    lines += [
        f"![Δ(k)](results_assets/{png.name})",
        "",
        f"Untrained turning point: layer {d['turning_point']} of {L}. Last column: the untrained model's "
        "difference at the same k on the turning point's STS-B dev pairs (the sweep of section 1), for contrast.",
        "",
        "| k | layers that can act (k..L-2) | paired seeds | trained Δ ± SE | seeds ahead | test-pair bootstrap 95% | "
        "untrained Δ (dev) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        c, boot = p["c"], p["c"]["bootstrap"]
        un = sweep.get(str(p["k"]))
        un_delta = (
            f"{un - untrained_causal:+.2f}" if un is not None and untrained_causal is not None else "n/a"
        )
        lines.append(
            f"| {p['k']} | {max(0, L - 1 - p['k'])} | {p['n']} | {_pm(p['mean'], p['se'])} | {c['ahead']} of {p['n']} "
            f"| {_interval((boot['lo'], boot['hi'])) if boot else 'n/a'} | {un_delta} |"
        )
    return lines + [""]


def _long_budget(run: Run, d: dict) -> tuple[list[str], list[str]]:
    """The section and its reading lines."""
    m = run.settings.long_multiple
    lines = [f"## 6. A longer budget ({m}x the steps)", ""]
    best = run.done("best-depth")
    if best is None:
        return lines + [
            "Not run yet: it starts once the seed grid is complete (it trains the best depth).",
            "",
        ], []
    arm = best["arm"]
    long_c, long_a = long_arms(run, d, arm)
    at_long = paired_comparison(run, long_a["name"], long_c["name"], long_a["seeds"])
    lines.append(
        f"Best bidirectional depth on the seed grid ({best['rule']}): **{arm['label']}**. Causal and it trained "
        f"at {m} x {run.total_steps()} steps, seeds {long_a['seeds']}; the 1x row uses the same seeds."
    )
    lines.append("")
    if not at_long["seeds"]:
        return lines + ["No long-budget pair has finished yet.", ""], []
    at_one = paired_comparison(run, arm["name"], "causal", at_long["seeds"])
    lines += [
        "| budget | steps | paired seeds | Δ ± SE (best depth − causal) | seeds ahead | test-pair bootstrap 95% | "
        "causal avg. |",
        "|---|---|---|---|---|---|---|",
    ]
    for budget, steps, c, causal_prefix in (
        ("1x", run.total_steps(), at_one, "eval-causal"),
        (f"{m}x", run.total_steps() * m, at_long, f"eval-{long_c['name']}"),
    ):
        avg = [run.done(f"{causal_prefix}-seed{s}")["average"] for s in c["seeds"]]
        boot = c["bootstrap"]
        lines.append(
            f"| {budget} | {steps} | {', '.join(map(str, c['seeds']))} | {_pm(c['mean'], c['se'])} | "
            f"{c['ahead']} of {len(c['seeds'])} | {_interval((boot['lo'], boot['hi'])) if boot else 'n/a'} | "
            f"{sum(avg) / len(avg):.2f} |"
        )
    reading = [
        f"- Longer budget: at {m}x the steps, {arm['label']} − causal = {_pm(at_long['mean'], at_long['se'])} over "
        f"seeds {at_long['seeds']} (verdict: {verdict(at_long)}), against {_pm(at_one['mean'], at_one['se'])} "
        "at 1x on the same seeds."
    ]
    return lines + [""], reading


def _full_check(run: Run, d: dict) -> tuple[list[str], list[str]]:
    lines = ["## 7. Sampled test pairs vs every test pair (the paper's protocol)", ""]
    best, seed = run.done("best-depth"), run.settings.seeds[0]
    if best is None:
        return lines + ["Not run yet: it scores the first seed of causal and of the best depth.", ""], []
    pairs, full_pairs = run.settings.eval_max_pairs, run.settings.full_max_pairs
    rows, agree, drift, averages = [], [], [], []
    for arm in ({"name": "causal", "label": "causal"}, best["arm"]):
        full_name, sampled_name = f"fullpairs-{arm['name']}-seed{seed}", f"eval-{arm['name']}-seed{seed}"
        full, sampled = run.done(full_name), run.done(sampled_name)
        if full is None or sampled is None:
            continue
        boot = bootstrap(run, {sampled_name: 1.0}, pairs)
        # a tolerance for the float noise of a percentile of equal values
        inside = boot is not None and boot["lo"] - 1e-6 <= full["average"] <= boot["hi"] + 1e-6
        agree.append(inside)
        averages.append((sampled["average"], full["average"]))
        # the sampled pairs scored again from the every-pair stage's embeddings: equal to the sampled score
        # when both stages encoded with the same adapter (the every-pair stage retrains it on a new machine)
        rescored = subset_average(run, full_name, full_pairs, pairs)
        # the sampled stage scored the same way (from its stored cosines, not its recorded average), so the
        # rounding of the stored cosines cannot show up as a difference
        recorded = subset_average(run, sampled_name, pairs, pairs)
        if rescored is not None and recorded is not None:
            drift.append(abs(rescored - recorded))
        from_full = "—" if rescored is None else format_score(rescored)
        rows.append(
            f"| {arm['label']}, seed {seed} | {format_score(sampled['average'])} | "
            f"{_score_interval(boot)} | {from_full} | {format_score(full['average'])} | "
            f"{sum(full['pairs'].values())} | {'yes' if inside else 'no'} |"
        )
    if not rows:
        return lines + ["No full-protocol evaluation has finished yet.", ""], []
    lines += [
        f"7-set average on {pairs} sampled pairs per set with its bootstrap interval over those pairs, the same "
        "sampled pairs scored from the every-pair stage's embeddings, and every pair:",
        "",
        "| arm | sampled | sampled: bootstrap 95% | sampled, from the every-pair embeddings | every pair | pairs "
        "| inside |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    word = "agree" if all(agree) else "do not all agree"
    reading = [
        f"- Test-pair sampling: the sampled and the every-pair scores {word} within the sampled bootstrap "
        f"interval ({sum(agree)} of {len(agree)} arm(s) inside)."
    ]
    if len(averages) == 2 and None not in (*averages[0], *averages[1]):
        (causal_sampled, causal_full), (best_sampled, best_full) = averages
        reading.append(
            f"- Seed {seed}, {best['arm']['label']} − causal: {best_sampled - causal_sampled:+.2f} on the sampled "
            f"pairs, {best_full - causal_full:+.2f} on every pair."
        )
    if drift:
        worst = max(drift)
        said = "- Scored from the every-pair stage's embeddings, the sampled pairs give a 7-set average "
        if worst < 0.005:  # below the 2-decimal precision of the tables: floating-point rounding at most
            same = "equal to" if worst == 0.0 else f"within {worst:.2g} points of"
            reading.append(said + f"{same} the sampled stage's: both columns measure one adapter.")
        else:
            reading.append(
                said
                + f"up to {worst:.2f} points away from the sampled stage's: the every-pair stage's adapter "
                "is not the one the sampled score measured, and the every-pair score carries that difference too."
            )
    return lines, reading


def _plain_summary(run: Run, d: dict, comps: list[tuple[str, dict]]) -> tuple[list[str], list[str]]:
    """The depths grouped by verdict (deepest first) and the depths whose sign only the test-pair bootstrap
    settles; and, apart, what the mean-pooling pair says about the released last-layer setting. Empty lists
    before any pair."""
    k_of = {a["name"]: a["from_layer"] for a in depth_arms(run, d)}
    depths = sorted(
        (c for _, c in comps if c["ref"] == "causal" and c["arm"] in k_of), key=lambda c: -k_of[c["arm"]]
    )
    mean_pair = next((c for _, c in comps if c["ref"] == "causal-mean"), None)
    groups: dict[str, list[str]] = {"helps": [], "hurts": [], "indistinguishable": [], "undecided": []}
    boot_only = []
    for c in depths:
        v, boot = verdict(c), c["bootstrap"]
        n = len(c["seeds"])
        groups[v].append(f"k={k_of[c['arm']]} ({_pm(c['mean'], c['se'])}, {n} seed{'s' if n != 1 else ''})")
        if v == "indistinguishable" and boot and (boot["lo"] > 0 or boot["hi"] < 0):
            boot_only.append(f"k={k_of[c['arm']]}")
    titles = {
        "helps": "helps",
        "hurts": "hurts",
        "indistinguishable": "indistinguishable from causal",
        "undecided": "undecided (fewer than 3 paired seeds)",
    }
    lines = []
    if depths:
        lines.append(
            f"- **In plain words**, trained bidirectional from layer k against causal at this scale and budget "
            f"({run.total_steps()} steps): "
            + "; ".join(
                f"{titles[v]}: {', '.join(items) if items else 'none'}" for v, items in groups.items()
            )
            + "."
        )
    if boot_only:
        lines.append(
            f"- For {' and '.join(boot_only)} the test-pair bootstrap alone excludes zero, but the difference "
            "varies so much from seed to seed that the t interval over seeds does not: these seeds do not "
            "establish its sign."
        )
    released = []
    if mean_pair is not None:
        released.append(
            "- For the released last-layer setting: with last-token pooling the last layer cannot change the pooled "
            "token; where it can act, with mean pooling, making it bidirectional changes the score by "
            f"{_pm(mean_pair['mean'], mean_pair['se'])} points over {len(mean_pair['seeds'])} paired seed(s) "
            f"against the causal mean-pooling control: **{verdict(mean_pair)}**."
        )
    return lines, released


def _depth_reading(run: Run, d: dict, comps: list[tuple[str, dict]]) -> list[str]:
    lines, released = _plain_summary(run, d, comps)
    pooling = {a["name"]: a["pooling"] for a in run.arms(d)}
    for label, c in comps:
        boot = c["bootstrap"]
        a, r = pooling[c["arm"]], pooling[c["ref"]]
        lines.append(
            f"- {label}: {_pm(c['mean'], c['se'])} points over {len(c['seeds'])} paired seed(s), ahead in "
            f"{c['ahead']}; t interval {_interval(c['t_interval'])}, test-pair bootstrap "
            f"{_interval((boot['lo'], boot['hi'])) if boot else 'n/a'}: **{verdict(c)}**"
            + (" at this scale and budget" if verdict(c) in ("helps", "hurts", "indistinguishable") else "")
            + (f" (the pooling differs: {_POOLING.get(a, a)} against {_POOLING.get(r, r)})" if a != r else "")
            + "."
        )
    identity, L = identity_difference(run), d["num_layers"]
    if identity is not None:
        lines.append(
            f"- The released setting (only layer {L - 1} bidirectional, last-token pooling) is the causal model: "
            f"measured, it {identity} ({DOC}, section 1). Only the depths above and the mean-pooling pair say "
            "what bidirectionality does where it can act."
        )
    return lines + released


def depth_sections(run: Run, d: dict, tp: dict, asset_dir: Path) -> list[str]:
    """Sections 4 to 8 of a depth-study RESULTS.md (the figure goes to ``asset_dir``)."""
    from experiments.report import turning_point_reading

    comps = comparisons(run, d)
    by_arm = {c["arm"]: c for _, c in comps if c["ref"] == "causal"}
    long_lines, long_reading = _long_budget(run, d)
    full_lines, full_reading = _full_check(run, d)
    reading = _depth_reading(run, d, comps) + long_reading + full_reading
    return [
        *(
            _paired_tables(comps)
            if comps
            else ["## 4. Paired differences", "", "No paired seed has finished yet.", ""]
        ),
        *_delta_k(run, d, tp, by_arm, asset_dir),
        *long_lines,
        *full_lines,
        "## 8. Reading",
        "",
        *turning_point_reading(tp),
        *(reading or ["No trained comparison has finished yet."]),
        "",
    ]
