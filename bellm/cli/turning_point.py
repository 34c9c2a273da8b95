"""``bellm turning-point``: the per-layer STS curve and the ``from_layer`` sweep
(:func:`bellm.find_turning_point`, :func:`bellm.sweep_from_layer`)."""

from __future__ import annotations

import argparse

from bellm.cli._help import DATA_DIR_HELP, MODEL_HELP
from bellm.common import LAYER_NORMS, POOLING_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help=MODEL_HELP,
    )
    parser.add_argument("--output", default="turning-point", help="output directory for the JSON and PNG")
    parser.add_argument("--pooling", default="last", choices=POOLING_MODES)
    parser.add_argument(
        "--prompt",
        default=None,
        help="prompt template with {text}; '' for none (default: BeLLM's for last pooling)",
    )
    parser.add_argument("--layer-norm", default="final", choices=LAYER_NORMS)
    parser.add_argument("--smooth", type=int, default=1, help="moving-average window over layers (1 = none)")
    parser.add_argument(
        "--max-pairs", type=int, default=None, help="sample of STS-B dev pairs (default: all 1500)"
    )
    parser.add_argument("--raw", action="store_true", help="original cased STS-B text instead of SentEval's")
    parser.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    parser.add_argument("--from-layers", type=int, nargs="+", default=None, help="sweep candidates k")
    parser.add_argument("--stride", type=int, default=None, help="sweep every stride-th k (default L//10)")
    parser.add_argument("--no-sweep", action="store_true", help="only the one-pass per-layer curve")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)


def check_arguments(args: argparse.Namespace) -> None:
    """UsageError for a bad option of ``bellm turning-point``, before any model is loaded."""
    from bellm.cli import _checks

    _checks.check_existing("--model", args.model)
    _checks.check_prompt(args.prompt, args.pooling)
    for flag, value in (
        ("--smooth", args.smooth),
        ("--max-pairs", args.max_pairs),
        ("--stride", args.stride),
        ("--batch-size", args.batch_size),
    ):
        _checks.check_count(flag, value)
    for k in args.from_layers or ():
        _checks.check_from_layer(k, args.model)
    _checks.check_existing("--data-dir", args.data_dir, kind="folder")
    _checks.check_output_dir("--output", args.output)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from bellm.models import load_model_and_tokenizer
    from bellm.turning_point import find_turning_point, sweep_from_layer

    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device)
    source = "raw" if args.raw else "senteval"
    common = dict(
        prompt=args.prompt,
        pooling=args.pooling,
        max_pairs=args.max_pairs,
        data_dir=args.data_dir,
        source=source,
        batch_size=args.batch_size,
    )
    result = find_turning_point(model, tokenizer, layer_norm=args.layer_norm, smooth=args.smooth, **common)
    if not args.no_sweep:
        result.sweep = sweep_from_layer(
            model, tokenizer, from_layers=args.from_layers, stride=args.stride, **common
        )
    json_path, png_path = result.save(args.output)
    print(result.format())
    print(f"wrote {json_path} and {png_path}")
    k = result.suggested_from_layer
    note = (
        " (with last-token pooling this equals the causal model: docs/bidirectional.md)"
        if result.same_as_causal
        else ""
    )
    print(f"turning point: layer {k} of {result.num_layers}; suggested from_layer={k}{note}")
    return 0
