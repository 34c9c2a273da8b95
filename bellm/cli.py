"""The ``bellm`` command line: one subcommand per task module.

Each task module owns its subcommand and exposes ``add_cli_arguments(parser)`` and ``cli_main(args) -> int``;
this file only wires them together, importing a module when its subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("bellm.demo", "turning point + STS-B on the real SmolLM2-135M, no training (the main job)"),
    "encode": ("bellm.corpus", "encode a .txt/.jsonl/.tsv file into resumable embedding shards"),
    "eval": ("bellm.evaluate", "STS12-16, STS-B and SICK-R Spearman with the paper's protocol"),
    "turning-point": ("bellm.turning_point", "per-layer STS curve and from_layer sweep; prints the chosen k"),
    "train": ("bellm.trainer", "LoRA + AnglE training through the packed kernels, with checkpoint/resume"),
    "serve": ("bellm.server.cli", "an OpenAI-compatible /v1/embeddings server with dynamic batching"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bellm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a task module not built yet: hide its subcommand
            if err.name == module_name:
                continue
            raise
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_cli_arguments(sub_parser)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    return int(args._module.cli_main(args) or 0)
