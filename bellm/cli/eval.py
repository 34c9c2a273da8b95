"""``bellm eval``: STS12-16, STS-B and SICK-R Spearman with the paper's protocol (:func:`bellm.evaluate_sts`)."""

from __future__ import annotations

import argparse

from bellm.cli._help import DATA_DIR_HELP, MODEL_HELP
from bellm.common import POOLING_MODES


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model/--from-layer/--adapter/--pooling/--prompt/--dtype/--device/--batch-size``."""
    parser.add_argument(
        "--model",
        default=None,
        help=MODEL_HELP,
    )
    parser.add_argument(
        "--from-layer",
        type=int,
        default=None,
        help="make attention layers >= k bidirectional (negative: from the end); default causal",
    )
    parser.add_argument("--adapter", default=None, help="a trained LoRA adapter directory to load on top")
    parser.add_argument("--pooling", default="last", choices=POOLING_MODES)
    parser.add_argument(
        "--prompt", default=None, help="prompt template with {text} (default: the encoder's BeLLM prompt)"
    )
    parser.add_argument(
        "--dtype", default=None, help="float32 / bfloat16 / float16 (default: bf16 on CUDA, fp32 on CPU)"
    )
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bellm.sts_data import TASKS

    add_model_arguments(parser)
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=list(TASKS),
        metavar="TASK",
        help=f"subset of: {' '.join(TASKS)} (default: all seven)",
    )
    parser.add_argument("--split", default="test", help="STS-B / SICK-R split (default test)")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="use the original cased text instead of SentEval's preprocessed files",
    )
    parser.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    parser.add_argument(
        "--max-pairs", type=int, default=None, help="evaluate a random sample per task (quick look)"
    )
    parser.add_argument("--output", default=None, help="write the results as JSON here (atomically)")


def check_model_arguments(args: argparse.Namespace) -> None:
    """UsageError for a bad model option (``add_model_arguments``), before any model is loaded."""
    from bellm.cli import _checks

    _checks.check_existing("--model", args.model)
    _checks.check_existing("--adapter", args.adapter, kind="folder")
    _checks.check_from_layer(args.from_layer, args.model)
    _checks.check_prompt(args.prompt, args.pooling)
    _checks.check_count("--batch-size", args.batch_size)


def check_arguments(args: argparse.Namespace) -> None:
    """UsageError for a bad option of ``bellm eval``, before any model is loaded."""
    from bellm.cli import _checks
    from bellm.errors import UsageError
    from bellm.sts_data import TASKS, _check

    check_model_arguments(args)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; valid tasks: {', '.join(TASKS)}")
    for task in args.tasks:
        if task in ("STSBenchmark", "SICKRelatedness"):
            try:
                _check(task, args.split, "raw" if args.raw else "senteval")
            except ValueError as err:
                raise UsageError(f"--split: {err}") from None
    _checks.check_count("--max-pairs", args.max_pairs)
    _checks.check_existing("--data-dir", args.data_dir, kind="folder")
    _checks.check_output_file("--output", args.output)


def describe_encoder(encoder, args: argparse.Namespace) -> tuple[str, dict]:
    """The row label and the ``model`` record of a results file, from what the Encoder actually runs (an
    adapter's saved from_layer included), not from the command line."""
    setting = encoder.config_dict()
    k, n = setting["from_layer"], encoder.num_layers
    label = "causal" if k >= n else f"from_layer={k}"
    if args.adapter:
        label += " + adapter"
    record = {
        "model": args.model or "SmolLM2-135M-Instruct (default)",
        "adapter": args.adapter,
        "num_layers": n,
        **setting,
    }
    return label, record


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from bellm._io import atomic_write_json
    from bellm.encoder import Encoder
    from bellm.evaluate import evaluate_sts, format_markdown, to_jsonable

    encoder = Encoder.from_pretrained(
        args.model,
        from_layer=args.from_layer,
        adapter=args.adapter,
        pooling=args.pooling,
        prompt=args.prompt,
        dtype=args.dtype,
        device=args.device,
    )
    results = evaluate_sts(
        encoder,
        tasks=args.tasks,
        data_dir=args.data_dir,
        split=args.split,
        source="raw" if args.raw else "senteval",
        batch_size=args.batch_size,
        max_pairs=args.max_pairs,
    )
    name, results["model"] = describe_encoder(encoder, args)
    print(format_markdown(results, name))
    if args.output:
        atomic_write_json(args.output, to_jsonable(results))
        print(f"wrote {args.output}")
    return 0
