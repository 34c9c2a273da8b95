"""The statistics of the comparisons: per-seed paired differences (mean, standard error, seeds ahead, per set)
and a paired bootstrap over the evaluated test pairs."""

from __future__ import annotations

import numpy as np

from bellm.common import normalize_whitespace
from bellm.sts_data import TASKS, load_sts
from experiments.stages import Run, read_embedding_cache

__all__ = [
    "headline_numbers",
    "row_spearman",
    "stage_cosines",
    "subset_average",
    "bootstrap",
    "pair_bootstrap",
    "paired_comparison",
    "verdict",
]


def headline_numbers(run: Run, d: dict) -> dict:
    """The 7-set averages of causal and BeLLM per seed, their paired differences and the causal spread."""
    causal, bellm_ = {}, {}
    for seed in run.settings.seeds:
        c, b = run.done(f"eval-causal-seed{seed}"), run.done(f"eval-bellm-k{d['k_bellm']}-seed{seed}")
        if c is not None:
            causal[seed] = c["average"]
        if b is not None:
            bellm_[seed] = b["average"]
    paired = [
        s
        for s in run.settings.seeds
        if s in causal and s in bellm_ and causal[s] is not None and bellm_[s] is not None
    ]
    vals = [v for v in causal.values() if v is not None]
    return {
        "causal": causal,
        "bellm": bellm_,
        "k": d["k_bellm"],
        "num_layers": d["num_layers"],
        "seeds": paired,
        "deltas": [bellm_[s] - causal[s] for s in paired],
        "causal_spread": (max(vals) - min(vals)) if len(vals) >= 2 else None,
    }


def row_spearman(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Spearman of every row of ``pred`` with the same row of ``gold`` (both ``(B, n)``); nan where undefined."""
    from scipy.stats import rankdata

    rp, rg = rankdata(pred, axis=1), rankdata(gold, axis=1)
    rp -= rp.mean(axis=1, keepdims=True)
    rg -= rg.mean(axis=1, keepdims=True)
    denom = np.sqrt((rp**2).sum(axis=1) * (rg**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rp * rg).sum(axis=1) / denom, np.nan)


def stage_cosines(run: Run, name: str) -> dict[str, np.ndarray] | None:
    """Each evaluated pair's cosine per task for the evaluation stage ``name``: from its JSON
    (``pair_cosines``), else from its embedding cache (``cache/<name>.npz``, runs written before the JSON held
    them); None when neither exists."""
    from bellm.evaluate import cosine_rows

    result = run.done(name)
    if result and result.get("pair_cosines"):
        return {t: np.asarray(v, dtype=np.float64) for t, v in result["pair_cosines"].items()}
    path = run.out / "cache" / f"{name}.npz"
    if not path.is_file():
        return None
    cache = read_embedding_cache(path)
    out = {}
    for task in TASKS:
        pairs = load_sts(task, "test", data_dir=run.data_dir).sample(run.settings.eval_max_pairs, 0)
        s1 = [normalize_whitespace(x) for x in pairs.sentences1]  # the keys evaluate_sts encoded under
        s2 = [normalize_whitespace(x) for x in pairs.sentences2]
        out[task] = cosine_rows(np.stack([cache[x] for x in s1]), np.stack([cache[x] for x in s2]))
    return out


def subset_average(run: Run, name: str, stage_pairs: int | None, subset_pairs: int | None) -> float | None:
    """The 7-set average Spearman x 100 of evaluation stage ``name`` recomputed on a subset of its pairs.

    The stage scored ``load_sts(...).sample(stage_pairs, 0)`` of every task; the subset is
    ``.sample(subset_pairs, 0)`` (e.g. the full-protocol stage, ``stage_pairs=None``, rescored on the sampled
    pairs of the grid, so both scores come from the same embeddings). None when the stage's cosines are
    missing or the subset's pairs are not all among the stage's."""
    cosines = stage_cosines(run, name)
    if cosines is None:
        return None
    scores = []
    for task in TASKS:
        pairs = load_sts(task, "test", data_dir=run.data_dir)
        scored, subset = pairs.sample_indices(stage_pairs, 0), pairs.sample_indices(subset_pairs, 0)
        if len(cosines[task]) != len(scored) or not np.isin(subset, scored).all():
            return None  # cosines of other pairs (an older stage read from its cache), or not a subset
        at = np.searchsorted(scored, subset)  # both sorted: the subset's positions among the scored pairs
        scores.append(float(row_spearman(cosines[task][at][None], pairs.scores[subset][None])[0]) * 100.0)
    return float(np.mean(scores))


def bootstrap(
    run: Run, weights: dict[str, float], max_pairs: int | None, n_boot: int = 1000, rng_seed: int = 0
) -> dict | None:
    """A paired bootstrap over test pairs of ``sum(weight x Spearman)`` of evaluation stages.

    The pairs of every task (``load_sts(...).sample(max_pairs, 0)``, the ones the stages scored) are resampled
    with replacement ``n_boot`` times; every stage in ``weights`` is scored on the *same* resampled pairs.
    Returns the 2.5 / 97.5 percentiles and the share of resamples <= 0 of the 7-set average (``lo``, ``hi``,
    ``share_le_0``) and of each task (``per_set``: {task: {lo, hi}}), or None when a stage's cosines are
    missing or every resample is undefined."""
    cosines = {name: stage_cosines(run, name) for name in weights}
    if not weights or any(c is None for c in cosines.values()):
        return None
    rng = np.random.default_rng(rng_seed)
    total, per_set = np.zeros(n_boot), {}
    for task in TASKS:
        gold = np.asarray(load_sts(task, "test", data_dir=run.data_dir).sample(max_pairs, 0).scores)
        idx = rng.integers(0, len(gold), size=(n_boot, len(gold)))  # the same resamples for every stage
        stat = np.zeros(n_boot)
        for name, weight in weights.items():
            stat += weight * row_spearman(cosines[name][task][idx], gold[idx]) * 100.0
        total += stat / len(TASKS)
        ok = stat[np.isfinite(stat)]
        per_set[task] = (
            {"lo": float(np.percentile(ok, 2.5)), "hi": float(np.percentile(ok, 97.5))} if ok.size else None
        )
    finite = total[np.isfinite(total)]
    if finite.size == 0:
        return None
    return {
        "n_boot": int(n_boot),
        "lo": float(np.percentile(finite, 2.5)),
        "hi": float(np.percentile(finite, 97.5)),
        "share_le_0": float(np.mean(finite <= 0)),
        "per_set": per_set,
        "pairs_per_task": max_pairs,
    }


def pair_bootstrap(
    run: Run,
    d: dict,
    seeds: list[int],
    n_boot: int = 1000,
    rng_seed: int = 0,
    arm: str | None = None,
    ref: str = "causal",
) -> dict | None:
    """Uncertainty of the mean paired difference ``arm - ref`` (default BeLLM - causal) from *which pairs*
    were evaluated: :func:`bootstrap` with weight ``+-1/len(seeds)`` on ``eval-<arm>-seed<s>`` and
    ``eval-<ref>-seed<s>``, i.e. the mean over seeds of the 7-set average difference, as in the reading. None
    when a stage's cosines are missing (e.g. caches deleted after an older run). This is the sampling noise of
    the test pairs (large with ``--eval-max-pairs``); the seed-to-seed spread is separate.
    """
    if not seeds:
        return None
    arm = arm or f"bellm-k{d['k_bellm']}"
    weights = {}
    for seed in seeds:
        weights[f"eval-{ref}-seed{seed}"] = -1.0 / len(seeds)
        weights[f"eval-{arm}-seed{seed}"] = 1.0 / len(seeds)
    result = bootstrap(run, weights, run.settings.eval_max_pairs, n_boot, rng_seed)
    if result is not None:
        result["seeds"] = list(seeds)
    return result


def paired_comparison(run: Run, arm: str, ref: str, seeds: list[int], prefix: str = "eval") -> dict:
    """``arm - ref`` over the seeds both have finished (``<prefix>-<name>-seed<s>`` stages): per-seed
    differences of the 7-set average, their mean, standard error (None below 2 seeds) and two-sided 95%
    t interval, seeds ahead, per-set mean differences with their standard errors, and the paired bootstrap
    over test pairs (:func:`bootstrap`)."""
    from scipy.stats import t as student_t

    paired, per_set = [], {task: [] for task in TASKS}
    for seed in seeds:
        a, r = run.done(f"{prefix}-{arm}-seed{seed}"), run.done(f"{prefix}-{ref}-seed{seed}")
        if a is None or r is None or a["average"] is None or r["average"] is None:
            continue
        paired.append((seed, a["average"] - r["average"]))
        for task in TASKS:
            if a["scores"][task] is not None and r["scores"][task] is not None:
                per_set[task].append(a["scores"][task] - r["scores"][task])
    deltas = [x for _, x in paired]
    n = len(deltas)
    mean = float(np.mean(deltas)) if n else None
    se = float(np.std(deltas, ddof=1) / np.sqrt(n)) if n >= 2 else None
    half = float(student_t.ppf(0.975, n - 1)) * se if se is not None else None
    weights = {}
    for seed, _ in paired:
        weights[f"{prefix}-{ref}-seed{seed}"] = -1.0 / n
        weights[f"{prefix}-{arm}-seed{seed}"] = 1.0 / n
    return {
        "arm": arm,
        "ref": ref,
        "seeds": [s for s, _ in paired],
        "deltas": deltas,
        "mean": mean,
        "se": se,
        "t_interval": (mean - half, mean + half) if half is not None else None,
        "ahead": sum(x > 0 for x in deltas),
        "per_set": {
            task: {
                "mean": float(np.mean(v)) if v else None,
                "se": float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) >= 2 else None,
            }
            for task, v in per_set.items()
        },
        "bootstrap": bootstrap(run, weights, run.settings.eval_max_pairs) if paired else None,
    }


def verdict(comparison: dict) -> str:
    """``helps`` / ``hurts`` when the t interval over seeds (at least 3) and the test-pair bootstrap both
    exclude zero on the same side, ``indistinguishable`` otherwise, ``undecided`` below 3 seeds."""
    n, t_int, boot = len(comparison["deltas"]), comparison["t_interval"], comparison["bootstrap"]
    if n < 3 or t_int is None or boot is None:
        return "undecided"
    if t_int[0] > 0 and boot["lo"] > 0:
        return "helps"
    if t_int[1] < 0 and boot["hi"] < 0:
        return "hurts"
    return "indistinguishable"
