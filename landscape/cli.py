"""Shared behaviour of the command-line entry points: bad input ends with one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, FileExistsError, ImportError)


def guarded(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; a user error (bad path, bad value, missing optional package) prints ``error: ...`` and exits 2."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
