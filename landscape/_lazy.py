"""Lazy re-exports for package ``__init__`` files: a name's module is imported when the name is first used.

So ``python -m landscape.epl --help`` (which imports the ``landscape`` package first) does not pay for torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` serving ``exports`` (name -> submodule, relative to ``package``)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    return __getattr__
