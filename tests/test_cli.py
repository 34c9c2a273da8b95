"""The ``bellm`` command line: every subcommand keeps its option set (names, defaults, choices, types).

``tests/data/cli_options.json`` was captured from the parser before the command line moved into its own
package; a change to an option must update it on purpose.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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


def test_subcommands_are_listed_in_the_same_order():
    parser = build_parser(load=None)
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == ["demo", "encode", "eval", "turning-point", "train"]


def test_top_level_help_imports_no_subcommand_and_no_torch():
    """``bellm --help`` builds only the command list: no subcommand module, no torch (that is what keeps it
    fast)."""
    code = (
        "import sys\n"
        "from bellm.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('bellm.cli.') or m in ('torch', 'numpy'))\n"
        "print('LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in result.stdout, result.stdout[-500:]
    assert "turning-point" in result.stdout


def test_a_subcommand_parses_with_only_its_own_module(tmp_path):
    from bellm.cli import COMMANDS

    for name in COMMANDS:
        parser = build_parser(load=name)
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert describe(sub.choices[name]) == option_sets()[name]


def test_no_library_module_imports_the_cli():
    package = Path(__file__).resolve().parents[1] / "bellm"
    for path in package.glob("*.py"):
        if path.name == "__main__.py":  # `python -m bellm` is the command line's other entry point
            continue
        text = path.read_text(encoding="utf-8")
        assert "bellm.cli" not in text and "from bellm import cli" not in text, path.name
