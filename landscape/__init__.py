"""safety-landscape: where in weight space an LLM stays safe.

Directions between checkpoints, in-place perturbation, batched generation and judges, resumable 1D/2D scans,
the EPL search and VISAGE (Peng et al., NeurIPS 2024; AsFT, arXiv 2506.08473). The names below are the public
API; each lives in the module named beside it, which holds the rest:

- directions: ``difference``, ``from_adapter``, ``random_like``, ``normalize``, ``load_direction``, ``save_direction``
- ``cosine`` (geometry), ``load_model`` (loading), ``make_judge`` (judges)
- ``SafetyEvaluator``, ``scan_1d``, ``scan_2d`` (scan); ``effective_perturbation_length``, ``EplSettings`` (search)
- ``visage`` (metrics)
"""

from ._pkg import lazy_exports

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
