"""``bellm demo``: the turning point and STS-B scores of the real SmolLM2-135M-Instruct, no training."""

from __future__ import annotations

import argparse

from bellm.cli._help import DATA_DIR_HELP, MODEL_HELP
from bellm.demo import DEV_PAIRS, TEST_PAIRS

QUICK_DEV_PAIRS, QUICK_TEST_PAIRS = 16, 24


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny samples ({QUICK_DEV_PAIRS} dev / {QUICK_TEST_PAIRS} test pairs) for CI",
    )
    parser.add_argument(
        "--model", default=None, help=MODEL_HELP
    )
    parser.add_argument(
        "--output", default="bellm-demo", help="directory for the curve PNG/JSON and demo.json"
    )
    parser.add_argument("--dev-pairs", type=int, default=None, help=f"STS-B dev pairs (default {DEV_PAIRS})")
    parser.add_argument(
        "--test-pairs", type=int, default=None, help=f"STS-B test pairs (default {TEST_PAIRS}; 0 = all 1379)"
    )
    parser.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    parser.add_argument("--batch-size", type=int, default=16)


def run(args: argparse.Namespace) -> int:
    from bellm.demo import format_report, run_demo

    dev = args.dev_pairs if args.dev_pairs is not None else (QUICK_DEV_PAIRS if args.quick else DEV_PAIRS)
    test = (
        args.test_pairs if args.test_pairs is not None else (QUICK_TEST_PAIRS if args.quick else TEST_PAIRS)
    )
    results = run_demo(
        args.model,
        output_dir=args.output,
        dev_pairs=dev,
        test_pairs=test,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
    )
    print(format_report(results, args.output))
    return 0
