"""Directions in weight space between checkpoints, and their normalisation and storage.

d_aligned = θ_aligned − θ_base (AsFT, arXiv 2506.08473), harmful fine-tuning directions
d_harm = θ_harmful − θ_aligned, LoRA adapter updates, seeded random directions (Peng et al., NeurIPS 2024)
and interpolations. Constructors stream tensor by tensor; see :mod:`landscape.geometry` for cosines.
"""

from .build import difference, from_adapter, gaussian_tensor, interpolation, random_like
from .core import Direction, content_hash, load_direction, save_direction
from .normalize import DEFAULT_BLACKLIST, NORMALIZATIONS, normalize, orthogonalize

__all__ = [
    "DEFAULT_BLACKLIST",
    "NORMALIZATIONS",
    "Direction",
    "content_hash",
    "difference",
    "from_adapter",
    "gaussian_tensor",
    "interpolation",
    "load_direction",
    "normalize",
    "orthogonalize",
    "random_like",
    "save_direction",
]
