"""The depth study (``--depth-study``): does bidirectionality help where it can act?

Its stages, in the order that gives the most informative paired comparisons soonest:

1. the seed grid, arm pair by arm pair, each seed of an arm right after the same seed of its reference: causal
   and the upper-quarter depth, then the middle depth, all-bidirectional, the mean-pooling pair (last layer
   bidirectional vs its causal control), BeLLM's ``k`` (the turning point, known to equal causal to within
   noise), every one with every seed;
2. the untrained rows and the untrained ``from_layer`` sweep on STS-B dev (``sweep``; the ``turning_point`` stage
   holds only the per-layer curve here, so the grid starts sooner);
3. ``best-depth``: the bidirectional last-token depth with the largest mean paired difference against causal over
   the grid's seeds, fixed once in its stage JSON;
4. the longer budget: causal and that depth at ``long_multiple`` x the steps, the first ``long_seeds`` seeds
   (stages ``train-long<m>x-<arm>-seed<s>`` / ``eval-long<m>x-...``);
5. the full-protocol check: the first seed of causal and of that depth scored on every test pair
   (``fullpairs-<arm>-seed<s>``, from the grid's adapters).

Stages 4 and 5 exist once ``best-depth`` is done; before that the plan counts them under a placeholder name.
"""

from __future__ import annotations

import numpy as np

from experiments.settings import ReproduceError

__all__ = ["depth_study_jobs", "grid_order", "depth_arms", "long_arms", "best_depth", "PLACEHOLDER"]

PLACEHOLDER = "bidir-best"  # the arm name the plan uses before the best depth is known


def depth_arms(run, d: dict) -> list[dict]:
    """The bidirectional last-token arms (every trained depth ``k < L`` with last-token pooling)."""
    return [a for a in run.arms(d) if a["pooling"] == "last" and a["from_layer"] < d["num_layers"]]


def grid_order(run, d: dict) -> list[tuple[dict, int]]:
    """``(arm, seed)`` of the seed grid in run order: causal interleaved with the first depth, then each other
    comparison's arms seed by seed (see the module doc)."""
    arms = {a["name"]: a for a in run.arms(d)}
    k, kq = d["k_bellm"], d["k_quarter"]
    by_priority = [n for n in (f"bidir-k{kq}", f"bidir-k{d['num_layers'] // 2}") if n in arms]
    by_priority += ["all-bidirectional", "last-layer-mean", f"bellm-k{k}"]
    order: list[tuple[dict, int]] = []
    pairs = {"last-layer-mean": "causal-mean"}
    for i, name in enumerate(by_priority):
        for seed in arms[name]["seeds"]:
            if i == 0:
                order.append((arms["causal"], seed))
            if name in pairs:
                order.append((arms[pairs[name]], seed))
            order.append((arms[name], seed))
    seen, unique = set(), []
    for arm, seed in order + [(a, s) for a in arms.values() for s in a["seeds"]]:  # any arm not named above
        if (arm["name"], seed) not in seen:
            seen.add((arm["name"], seed))
            unique.append((arm, seed))
    return unique


def best_depth(run, d: dict) -> dict:
    """The ``best-depth`` stage: the depth arm with the largest mean paired difference against causal over the
    grid's seeds (seeds with an undefined average left out). Raises ReproduceError while a grid evaluation is
    missing or when no depth has a defined difference."""

    def choose() -> dict:
        means = {}
        for arm in depth_arms(run, d):
            deltas = []
            for seed in arm["seeds"]:
                a, c = run.done(f"eval-{arm['name']}-seed{seed}"), run.done(f"eval-causal-seed{seed}")
                if a is None or c is None:
                    raise ReproduceError(
                        f"best-depth needs eval-{arm['name']}-seed{seed} and its causal pair"
                    )
                if a["average"] is not None and c["average"] is not None:
                    deltas.append(a["average"] - c["average"])
            if deltas:
                means[arm["name"]] = float(np.mean(deltas))
        if not means:
            raise ReproduceError("best-depth: no depth has a defined 7-set average difference against causal")
        name = max(means, key=means.get)
        arm = next(a for a in depth_arms(run, d) if a["name"] == name)
        return {
            "arm": arm,
            "mean_paired_difference": means,
            "rule": "largest mean paired difference vs causal",
        }

    return run.stage("best-depth", choose)


def long_arms(run, d: dict, best: dict) -> list[dict]:
    """Causal and the best depth at ``long_multiple`` x the steps, with the first ``long_seeds`` seeds."""
    m, seeds = run.settings.long_multiple, run.settings.seeds[: run.settings.long_seeds]
    causal = next(a for a in run.arms(d) if a["name"] == "causal")
    return [
        {
            **a,
            "name": f"long{m}x-{a['name']}",
            "label": f"{a['label']}, {m}x steps",
            "multiple": m,
            "seeds": seeds,
        }
        for a in (causal, best)
    ]


def depth_study_jobs(run, d: dict, for_estimate: bool = False) -> list[tuple[str, object]]:
    """``(stage name, fn)`` in run order (module doc). The stages after ``best-depth`` are listed once it is
    done, or with ``for_estimate`` under the placeholder arm :data:`PLACEHOLDER`."""
    jobs = []
    for arm, seed in grid_order(run, d):
        jobs += run.arm_jobs(arm, seed)
    jobs += [(f"untrained-{r['name']}", lambda r=r: run._eval_untrained(r)) for r in run.untrained_rows(d)]
    if not (run.done("turning_point") or {}).get("curve", {}).get("sweep"):  # an extended standard run has it
        jobs.append(("sweep", lambda: run.sweep(d)))
    jobs.append(("best-depth", lambda: best_depth(run, d)))
    done = run.done("best-depth")
    if done is None and not for_estimate:
        return jobs
    best = done["arm"] if done else {"name": PLACEHOLDER, "from_layer": 0, "pooling": "last", "label": ""}
    causal = next(a for a in run.arms(d) if a["name"] == "causal")
    arms = long_arms(run, d, best)
    for seed in arms[0]["seeds"]:
        for arm in arms:
            jobs += run.arm_jobs(arm, seed)
    seed = run.settings.seeds[0]
    for arm in (causal, best):
        jobs.append((f"fullpairs-{arm['name']}-seed{seed}", lambda arm=arm: full_pairs(run, arm, seed)))
    return jobs


def full_pairs(run, arm: dict, seed: int) -> dict:
    """A grid adapter scored on every test pair (``Settings.full_max_pairs``), reusing the sampled
    evaluation's embeddings."""
    encoder = run.load_encoder(arm["from_layer"], arm["pooling"], adapter=run.adapter(arm, seed))
    name = f"fullpairs-{arm['name']}-seed{seed}"
    result = run.evaluate(name, encoder, every_pair=True, seed_cache=f"eval-{arm['name']}-seed{seed}")
    return {"arm": arm, "seed": seed, **result}
