"""safety-landscape: where in weight space an LLM stays safe.

Directions between checkpoints, in-place perturbation, batched generation and judges, resumable 1D/2D scans,
the EPL search and VISAGE (Peng et al., NeurIPS 2024; AsFT, arXiv 2506.08473). The names below are the public
API; each lives in the module named beside it, which holds the rest:

- directions: ``difference``, ``from_adapter``, ``random_like``, ``normalize``, ``load_direction``, ``save_direction``
- ``cosine`` (geometry), ``load_model`` (loading), ``make_judge`` (judges)
- ``SafetyEvaluator``, ``scan_1d``, ``scan_2d`` (scan); ``effective_perturbation_length``, ``EplSettings`` (search)
- ``visage`` (metrics)
"""

import os as _os

# Idle OpenMP threads sleep instead of spinning (unless the caller chose a policy): beside a competing job of the
# same size, spinning threads fight over the cores (an EPL search took 4.3x its idle time with OMP_WAIT_POLICY
# ACTIVE, 2.5x with libgomp's default, 0.9x with PASSIVE; benchmarks/bench_load.py). Read when torch loads its
# OpenMP runtime, so it acts where this package is imported before torch (every command of the toolkit).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._pkg import lazy_exports  # noqa: E402

_EXPORTS = {
    "Direction": ".directions",
    "difference": ".directions",
    "from_adapter": ".directions",
    "random_like": ".directions",
    "normalize": ".directions",
    "load_direction": ".directions",
    "save_direction": ".directions",
    "cosine": ".geometry",
    "load_model": ".loading",
    "make_judge": ".judges",
    "SafetyEvaluator": ".scan",
    "scan_1d": ".scan",
    "scan_2d": ".scan",
    "effective_perturbation_length": ".search",
    "EplSettings": ".search",
    "visage": ".metrics",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
