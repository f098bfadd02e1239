"""safety-landscape: where in weight space an LLM stays safe.

Directions between checkpoints (:mod:`landscape.directions`), in-place perturbation (:mod:`landscape.perturb`),
batched generation and judges, resumable 1D/2D scans, EPL and VISAGE (Peng et al., NeurIPS 2024; AsFT,
arXiv 2506.08473). The names below are the public API; modules hold the rest.
"""

from .directions import Direction, difference, from_adapter, load_direction, normalize, random_like, save_direction
from .generation import GenerationSettings, HFBackend, generate
from .geometry import cosine, cosine_table, random_null
from .judges import make_judge
from .loading import load_model
from .metrics import effective_perturbation_length, epl_adaptive, epl_from_grid, visage, wilson_interval
from .perturb import Perturbation
from .scan import SafetyEvaluator, scan, scan_1d, scan_2d

__all__ = [
    "Direction",
    "GenerationSettings",
    "HFBackend",
    "Perturbation",
    "SafetyEvaluator",
    "cosine",
    "cosine_table",
    "difference",
    "effective_perturbation_length",
    "epl_adaptive",
    "epl_from_grid",
    "from_adapter",
    "generate",
    "load_direction",
    "load_model",
    "make_judge",
    "normalize",
    "random_like",
    "random_null",
    "save_direction",
    "scan",
    "scan_1d",
    "scan_2d",
    "visage",
    "wilson_interval",
]
