"""Normalisation and orthogonalisation of directions.

Normalisations (each relative to reference weights θ):

- ``none``: the direction as it is;
- ``model``: the whole direction scaled to ‖θ‖;
- ``layer``: each tensor scaled to its weight's norm (Peng et al. 2024);
- ``filter``: each output unit's weights scaled to the norm of the reference's (Li et al. 2018): rows of a
  (d_out, d_in) weight, columns of a (d_in, d_out) one (GPT-2's Conv1D); 1-D tensors that are not blacklisted
  are scaled as a whole.

A blacklist of regular expressions (default: normalisation layers, as Peng et al.) gets a zero
direction; ``"1d"`` in the blacklist zeroes every 1-D tensor (biases and norms, as Li et al.).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..geometry import dot, dot64
from ..tensors import RandomStore, ScaledRandomStore, open_store
from .core import Direction, stream_map

NORMALIZATIONS = ("none", "model", "layer", "filter")
DEFAULT_BLACKLIST = ("norm", r"(^|\.)ln_")


def blacklisted_names(names: list[str], blacklist, shapes: dict[str, tuple], strict: bool) -> set[str]:
    """Names matched by any pattern; with ``strict``, a pattern that matches nothing is an error."""
    out: set[str] = set()
    for pat in blacklist:
        if pat == "1d":
            hit = {n for n in names if len(shapes[n]) <= 1}
        else:
            try:
                rx = re.compile(pat)
            except re.error as e:
                raise ValueError(f"blacklist pattern {pat!r} is not a valid regular expression: {e}") from e
            hit = {n for n in names if rx.search(n)}
        if strict and not hit:
            raise ValueError(f"blacklist pattern {pat!r} matches no tensor (e.g. {names[0]!r})")
        out |= hit
    return out


CONV1D_MODEL_TYPES = ("gpt2", "openai-gpt")  # transformers' Conv1D: weights stored as (d_in, d_out)
_CONV1D_WEIGHT = re.compile(r"(^|\.)(c_attn|c_proj|c_fc|q_attn)\.weight$")


def transposed_weights(reference, names: list[str]) -> set[str]:
    """Names among ``names`` whose weights are stored (d_in, d_out): the model's Conv1D modules, or for a
    checkpoint directory of a Conv1D model type, its c_attn / c_proj / c_fc weights."""
    if isinstance(reference, torch.nn.Module):
        from transformers.pytorch_utils import Conv1D

        found = {f"{n}.weight" for n, m in reference.named_modules() if isinstance(m, Conv1D)}
        return {n for n in names if n in found or any(n == f.split(".", 1)[-1] for f in found)}
    if isinstance(reference, (str, Path)):
        from ..provenance import model_type

        if model_type(reference) in CONV1D_MODEL_TYPES:
            return {n for n in names if _CONV1D_WEIGHT.search(n)}
    return set()


def _eps_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(a))


def normalize(
    direction: Direction,
    reference,
    method: str = "layer",
    blacklist=None,
    out: str | Path | None = None,
    name: str | None = None,
) -> Direction:
    """Scale ``direction`` relative to the weights ``reference`` (checkpoint, state dict or model).

    Args:
        direction: the raw direction.
        reference: weights θ whose norms set the scale.
        method: one of ``none``, ``model``, ``layer``, ``filter``.
        blacklist: regexes (and/or "1d") of tensors to zero; None uses :data:`DEFAULT_BLACKLIST`, which may
            match nothing; patterns given explicitly must each match some tensor.
        out: write to this directory instead of returning in memory.
        name: label of the result (default: the input's).
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"Unknown normalization {method!r}. Available: {', '.join(NORMALIZATIONS)}")
    ref = open_store(reference)
    names = direction.names()
    missing = [n for n in names if n not in set(ref.keys())]
    if missing:
        raise KeyError(f"{ref.origin}: no tensor {missing[0]!r} (the direction has {len(names)} tensors)")
    shapes = {n: direction.shape(n) for n in names}
    for n in names:
        if tuple(ref.shape(n)) != tuple(shapes[n]):
            raise ValueError(
                f"{ref.origin}: tensor {n!r} has shape {list(ref.shape(n))}, the direction {list(shapes[n])}"
            )
    transposed = transposed_weights(reference, names) if method == "filter" else set()
    strict = blacklist is not None
    black = blacklisted_names(names, DEFAULT_BLACKLIST if blacklist is None else blacklist, shapes, strict)
    scale = 1.0
    if method == "model":
        kept = [n for n in names if n not in black]
        dn = np.sqrt(sum(dot64(direction.get(n), direction.get(n)) for n in kept))
        wn = np.sqrt(sum(dot64(ref.get(n).float(), ref.get(n).float()) for n in kept))
        scale = float(wn / dn) if dn > 0 else 0.0

    def factor(n: str, d: torch.Tensor) -> torch.Tensor | None:
        """What ``d`` (the direction's tensor ``n``) is multiplied by; None leaves it as it is."""
        if method == "none":
            return None
        if method == "model":
            return torch.tensor(scale, dtype=torch.float32)
        w = ref.get(n).float().to(d.device)
        if method == "layer" or d.dim() <= 1:
            return _eps_div(w.norm(), d.norm())
        if n in transposed:  # output units are columns: (dᵀ · s[:, None])ᵀ is d · s[None, :]
            return _eps_div(w.T.norm(dim=1), d.T.norm(dim=1))[None, :]
        rows_w = w.reshape(w.shape[0], -1).norm(dim=1)
        rows_d = d.reshape(d.shape[0], -1).norm(dim=1)
        return _eps_div(rows_w, rows_d).reshape(-1, *([1] * (d.dim() - 1)))

    def one(n: str) -> torch.Tensor:
        d = direction.get(n).float()
        if n in black:
            return torch.zeros_like(d)
        f = factor(n, d)
        return d.clone() if f is None else d * f

    meta = {**direction.meta, "normalization": method, "blacklist": sorted(black)}
    if name:
        meta["name"] = name
    meta.setdefault("normalized_from", direction.kind)
    store = direction.store
    if out is None and type(store) is RandomStore:
        # A seeded random direction stays lazy: only its factors are kept (drawn once to compute them), so it
        # can be drawn again, on the device, tensor by tensor, with bit-identical values.
        scales = {n: factor(n, direction.get(n).float()) for n in names if n not in black}
        return Direction(ScaledRandomStore(store, scales, black), meta, dict(direction.aliases))
    return stream_map(names, one, meta, out=out)


def orthogonalize(
    direction: Direction, others: list[Direction], out: str | Path | None = None, name: str | None = None
) -> Direction:
    """Remove from ``direction`` its projection onto the span of ``others`` (Gram–Schmidt over the whole vector).

    The projection coefficients come from the Gram matrix of ``others`` (float64, pseudo-inverse, so
    linearly dependent ``others`` are fine); the result is built tensor by tensor.
    """
    if not others:
        raise ValueError("orthogonalize needs at least one direction to orthogonalise against")
    names = direction.names()
    gram = np.array([[dot(u, v, names) for v in others] for u in others])
    rhs = np.array([dot(direction, u, names) for u in others])
    coef = np.linalg.pinv(gram) @ rhs

    def one(n: str) -> torch.Tensor:
        d = direction.get(n).float().clone()
        for c, u in zip(coef, others, strict=True):
            d -= float(c) * u.get(n).float().to(d.device)
        return d

    meta = {**direction.meta, "kind": "orthogonalized", "orthogonal_to": [u.name for u in others]}
    if name:
        meta["name"] = name
    return stream_map(names, one, meta, out=out)
