"""The ``bellm`` command line: one module per subcommand, imported only when that subcommand runs.

Each subcommand module (``bellm/cli/<name>.py``) has ``add_arguments(parser)`` and ``run(args) -> int`` and
does nothing but parse arguments and call the library. :data:`COMMANDS` registers them; a new subcommand is
one module plus one line there. ``bellm --help`` imports none of them, so it stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NamedTuple

__all__ = ["COMMANDS", "build_parser", "main"]


class Command(NamedTuple):
    module: str  # the module with add_arguments(parser) and run(args)
    help: str  # one line for `bellm --help`


COMMANDS: dict[str, Command] = {
    "demo": Command("bellm.cli.demo", "turning point + STS-B on the real SmolLM2-135M, no training"),
    "encode": Command("bellm.cli.encode", "encode a .txt/.jsonl/.tsv file into resumable embedding shards"),
    "eval": Command("bellm.cli.eval", "STS12-16, STS-B and SICK-R Spearman with the paper's protocol"),
    "turning-point": Command(
        "bellm.cli.turning_point", "per-layer STS curve and from_layer sweep; prints the chosen k"
    ),
    "train": Command(
        "bellm.cli.train", "LoRA + AnglE training through the packed kernels, with checkpoint/resume"
    ),
    "serve": Command(
        "bellm.cli.serve", "an OpenAI-compatible /v1/embeddings server with dynamic batching (bellm[serve])"
    ),
}


DESCRIPTION = "bellm: decoder LLMs as sentence encoders (BeLLM). `bellm COMMAND --help` lists its options."


def build_parser(load: str | None = "all") -> argparse.ArgumentParser:
    """The ``bellm`` parser. ``load``: the subcommand whose module is imported and whose options are added
    (``"all"``: every one; ``None``: none, enough for ``bellm --help``)."""
    parser = argparse.ArgumentParser(prog="bellm", description=DESCRIPTION)
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also accepted anywhere after the subcommand)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        if load in ("all", name):
            module = importlib.import_module(command.module)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record, not the stream it was created with (which a caller
    such as a test harness may since have closed)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging() -> None:
    """bellm's progress and warnings (``logging.getLogger("bellm...")``) go to stderr, one plain line each."""
    logger = logging.getLogger("bellm")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# the command line's own mistakes (exit 2): options, paths and a resume with another set-up
_USAGE_ERRORS = (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def exit_code(err: BaseException) -> int:
    """2 for a usage error (:class:`bellm.errors.UsageError`, a missing or unusable path), 1 for anything
    else (a bad file's content, a failed run)."""
    from bellm.errors import EXIT_DATA, EXIT_USAGE, UsageError

    return EXIT_USAGE if isinstance(err, (UsageError, *_USAGE_ERRORS)) else EXIT_DATA


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bellm`` console script and ``python -m bellm``; returns the exit status.

    An error is reported as one line, ``bellm COMMAND: error: ...``, with exit status 2 for usage errors and 1
    for data errors (:func:`exit_code`); ``--debug`` (anywhere on the line) re-raises it with its traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(load=chosen)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    _configure_logging()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"bellm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"bellm {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return exit_code(err)
