"""The statistics of the headline comparison (BeLLM vs causal): per-seed differences and a paired bootstrap
over the evaluated test pairs."""

from __future__ import annotations

import numpy as np

from bellm.common import normalize_whitespace
from bellm.sts_data import TASKS, load_sts
from experiments.stages import Run, read_embedding_cache

__all__ = ["headline_numbers", "row_spearman", "pair_bootstrap"]


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


def pair_bootstrap(run: Run, d: dict, seeds: list[int], n_boot: int = 1000, rng_seed: int = 0) -> dict | None:
    """Uncertainty of the headline difference from *which pairs* were evaluated (a paired bootstrap).

    The evaluated pairs of every task are resampled with replacement ``n_boot`` times; each resample scores
    causal and BeLLM of every seed in ``seeds`` on the *same* pairs, from the embeddings each evaluation
    persisted (``cache/eval-<arm>-seed<s>.npz``). The statistic is the mean over seeds of the 7-set average
    difference, as in the reading. Returns its 2.5 / 97.5 percentiles and the share of resamples <= 0, or None
    when a cache is missing (e.g. deleted after the run). This is the sampling noise of the test pairs (large
    with ``--eval-max-pairs``); the seed-to-seed spread is separate.
    """
    from bellm.evaluate import cosine_rows

    if not seeds:
        return None
    arms = {"causal": -1.0, f"bellm-k{d['k_bellm']}": 1.0}
    caches = {}
    for seed in seeds:
        for arm in arms:
            path = run.out / "cache" / f"eval-{arm}-seed{seed}.npz"
            if not path.is_file():
                return None
            caches[arm, seed] = read_embedding_cache(path)
    rng = np.random.default_rng(rng_seed)
    total = np.zeros(n_boot)
    for task in TASKS:
        pairs = load_sts(task, "test", data_dir=run.data_dir).sample(run.settings.eval_max_pairs, 0)
        s1 = [normalize_whitespace(x) for x in pairs.sentences1]  # the keys evaluate_sts encoded under
        s2 = [normalize_whitespace(x) for x in pairs.sentences2]
        gold = np.asarray(pairs.scores, dtype=np.float64)
        idx = rng.integers(0, len(gold), size=(n_boot, len(gold)))  # the same resamples for every arm
        for (arm, _seed), cache in caches.items():
            cos = cosine_rows(np.stack([cache[x] for x in s1]), np.stack([cache[x] for x in s2]))
            rho = row_spearman(cos[idx], gold[idx]) * 100.0
            total += arms[arm] * rho / (len(seeds) * len(TASKS))
    finite = total[np.isfinite(total)]
    if finite.size == 0:
        return None
    return {
        "n_boot": int(n_boot),
        "lo": float(np.percentile(finite, 2.5)),
        "hi": float(np.percentile(finite, 97.5)),
        "share_le_0": float(np.mean(finite <= 0)),
        "seeds": list(seeds),
        "pairs_per_task": run.settings.eval_max_pairs,
    }
