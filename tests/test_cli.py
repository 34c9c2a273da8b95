"""The ``bellm`` command line: every subcommand keeps its option set (names, defaults, choices, types).

``tests/data/cli_options.json`` was captured from the parser before the command line moved into its own
package; a change to an option must update it on purpose.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bellm.cli import build_parser

EXPECTED = Path(__file__).parent / "data" / "cli_options.json"


def _plain(value):
    if value is None or isinstance(value, (int, float, str, bool, list)):
        return value
    return repr(value)


def describe(parser: argparse.ArgumentParser) -> dict:
    """Every option of ``parser`` (help texts excluded) as JSON-ready data."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        key = "/".join(action.option_strings) or action.dest
        out[key] = {
            "dest": action.dest,
            "default": _plain(action.default),
            "choices": list(action.choices) if action.choices else None,
            "nargs": action.nargs,
            "required": action.required,
            "type": getattr(action.type, "__name__", None),
            "const": _plain(action.const),
            "action": type(action).__name__,
            "metavar": action.metavar,
        }
    return out


def option_sets() -> dict:
    parser = build_parser()
    found = {"": describe(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = describe(sub)
    return found


def test_every_subcommand_keeps_its_options():
    expected = json.loads(EXPECTED.read_text())
    found = option_sets()
    assert sorted(found) == sorted(expected)
    for command in expected:
        assert found[command] == expected[command], f"options of {command or 'bellm'!r} changed"
