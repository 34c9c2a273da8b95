"""Argument checks the subcommands run before anything expensive (no torch import, no model load).

Each raises :class:`bellm.errors.UsageError` with one line naming the option, the value and the fix. The
number of layers for ``--from-layer`` is read from the model's files (:func:`bellm.models.num_layers_of`).
"""

from __future__ import annotations

import os
from pathlib import Path

from bellm._io import check_output_dir, nearest_existing
from bellm.errors import UsageError

__all__ = [
    "check_count",
    "check_existing",
    "check_from_layer",
    "check_output_dir",
    "check_output_file",
    "check_prompt",
]


def check_count(flag: str, value, *, none_ok: bool = True) -> None:
    """``value`` is an int >= 1 (or None when allowed)."""
    if value is None and none_ok:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UsageError(f"{flag} must be a whole number >= 1, got {value!r}")


def check_existing(flag: str, path, *, kind: str = "path") -> None:
    """``path`` (when given) exists; ``kind`` "folder" or "file" also checks which it is."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{flag} {str(path)!r} does not exist; pass an existing {kind}")
    if kind == "folder" and not p.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is not a folder")
    if kind == "file" and not p.is_file():
        raise UsageError(f"{flag} {str(path)!r} is not a file")


def check_from_layer(from_layer, model, gguf_file=None) -> None:
    """``--from-layer`` lies in ``-n..n`` for the model's ``n`` layers (skipped when they cannot be read
    without loading; the load checks it then)."""
    if from_layer is None:
        return
    from bellm.models import num_layers_of

    n = num_layers_of(model, gguf_file)
    if n is not None and not -n <= from_layer <= n:
        raise UsageError(
            f"--from-layer {from_layer} is out of range for this {n}-layer model; use 0..{n} "
            f"(0 = all layers bidirectional, {n} = none) or -{n}..-1 (counting from the end)"
        )


def check_prompt(prompt, pooling: str) -> None:
    from bellm.common import resolve_prompt

    try:
        resolve_prompt(prompt, pooling)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--prompt: {err}") from None


def check_output_file(flag: str, path) -> None:
    """``path`` (when given) is, or can be created as, a writable file."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a folder; pass a file path")
    existing = nearest_existing(p.parent)
    if not existing.is_dir():
        raise UsageError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, so the file cannot be written")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {str(path)!r}: the folder {str(existing)!r} is not writable; choose another path")
