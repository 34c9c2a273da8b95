"""The two kinds of error the ``bellm`` command line reports in one line, and their exit codes.

- :class:`UsageError` (exit 2): an argument, option combination or path that cannot work (a ``--from-layer``
  out of range, an output path that is a file, a resume with another set-up). Raised before anything expensive.
- :class:`DataFileError` (exit 1): a file whose content is bad (invalid UTF-8, a damaged ``.gz``, a bad row, a
  damaged run record or checkpoint); the message names the file and, where there is one, the line.

Both are ValueErrors, so library callers can keep catching ValueError. Light module: imports nothing.
"""

from __future__ import annotations

__all__ = ["DataFileError", "UsageError", "EXIT_DATA", "EXIT_USAGE"]

EXIT_USAGE = 2
EXIT_DATA = 1


class UsageError(ValueError):
    """A bad argument, option or path: the message names it and the fix (``bellm`` exits with 2)."""


class DataFileError(ValueError):
    """A file whose content cannot be used: the message names the file (and line) and the fix (exit 1)."""
