"""Directions in weight space between checkpoints, and their normalisation and storage.

d_aligned = θ_aligned − θ_base (AsFT, arXiv 2506.08473), harmful fine-tuning directions
d_harm = θ_harmful − θ_aligned, LoRA adapter updates, seeded random directions (Peng et al., NeurIPS 2024),
interpolations, and worst-case directions (the steepest descent of a compliance loss). Constructors stream
tensor by tensor; see :mod:`landscape.geometry` for cosines.
"""

from .._pkg import lazy_exports

_EXPORTS = {
    "difference": ".build",
    "from_adapter": ".build",
    "gaussian_tensor": ".build",
    "random_like": ".build",
    "compliance_loss": ".gradient",
    "gradient_direction": ".gradient",
    "Direction": ".core",
    "content_hash": ".core",
    "load_direction": ".core",
    "save_direction": ".core",
    "DEFAULT_BLACKLIST": ".normalization",
    "NORMALIZATIONS": ".normalization",
    "normalize": ".normalization",
    "orthogonalize": ".normalization",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
