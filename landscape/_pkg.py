"""Package plumbing: lazy re-exports for package ``__init__`` files, and warnings that point at the caller.

A lazy export keeps ``python -m landscape.epl --help`` (which imports the package first) from paying for torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

OMP_MARK = "SAFETY_LANDSCAPE_SET_OMP_WAIT_POLICY"


def sleep_idle_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless the caller chose a policy.

    Beside a competing job of the same size, spinning threads fight over the cores: an EPL search took 4.3x its
    idle time with OMP_WAIT_POLICY=ACTIVE, 2.5x with libgomp's default and 0.9x with PASSIVE, which costs it 23 %
    alone on the tiny organism (``benchmarks/bench_load.py``). The searches (``landscape.epl``, ``landscape.scan``)
    call this before torch loads its OpenMP runtime, which reads the policy once. Organism builds, many small
    kernels where waking a sleeping thread costs most, do not inherit it (:func:`landscape.determinism.pinned_env`).
    """
    import os

    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ[OMP_MARK] = "1"


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` serving ``exports`` (name -> submodule, relative to ``package``)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    return __getattr__


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside this toolkit and torch (the user's call), so a
    warning raised inside a ``torch.no_grad`` wrapper does not point into torch."""
    import os
    import sys
    import warnings

    import torch

    here = os.path.dirname(os.path.abspath(__file__))
    skip = tuple(
        d + os.sep for d in (here, os.path.join(os.path.dirname(here), "asft"), os.path.dirname(torch.__file__))
    )
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
