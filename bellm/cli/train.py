"""``bellm train``: LoRA + AnglE training (:func:`bellm.train`); one option per :class:`bellm.TrainConfig`
field."""

from __future__ import annotations

import argparse
import dataclasses
import json

from bellm.cli._help import MODEL_HELP

# help texts that say more than the field's default
_HELP = {"model": MODEL_HELP}
# TrainConfig fields whose default is None but whose values are numbers
_OPTIONAL_NUMBERS = {"max_steps": int, "max_examples": int, "eval_max_pairs": int, "max_grad_norm": float}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--output`` and ``--<field>`` for every other TrainConfig field (``--from-layer`` for
    ``from_layer``); booleans get ``--x/--no-x``."""
    from bellm.train_config import TrainConfig

    parser.add_argument(
        "--data",
        required=True,
        help="triplets (anchor/text, positive, negative) or scored pairs "
        "(sentence1, sentence2, score): .tsv, .tsv.gz or .jsonl",
    )
    parser.add_argument(
        "--output", required=True, dest="output_dir", help="run directory (adapter, checkpoints)"
    )
    defaults = TrainConfig(data="", output_dir="")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "output_dir"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        elif f.name in _OPTIONAL_NUMBERS:
            kind = _OPTIONAL_NUMBERS[f.name]
            parser.add_argument(flag, dest=f.name, type=kind, default=default, help=f"default {default}")
        else:
            kind = type(default) if default is not None else str
            help_text = _HELP.get(f.name, f"default {default!r}")
            parser.add_argument(flag, dest=f.name, type=kind, default=default, help=help_text)


def check_arguments(args: argparse.Namespace) -> None:
    """UsageError for a bad option or path, in milliseconds, before torch is imported or a model loaded (the
    library checks the rest, still before the model loads)."""
    from bellm.cli import _checks

    _checks.check_existing("--data", args.data, kind="file")
    _checks.check_existing("--eval-data", args.eval_data, kind="file")
    _checks.check_existing("--model", args.model)
    _checks.check_from_layer(args.from_layer, args.model, args.gguf_file)
    _checks.check_output_dir("--output", args.output_dir)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from bellm.train_config import TrainConfig
    from bellm.trainer import train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    print(json.dumps(train(config)))
    return 0
