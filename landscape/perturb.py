"""Move a model's weights along directions, in place on its device, and put them back bit for bit.

θ = θ₀ + Σ cᵢ·dᵢ is computed in fp32 from a pristine copy of θ₀ kept on the device, and cast to the
model's dtype once, so no error accumulates from point to point. Restoring copies the pristine tensors
back (never "subtract what was added"). Peng et al.'s code instead rebuilds a CPU fp32 state dict and
copies it to the GPU with ``load_state_dict`` at every grid point.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._pkg import warn_caller
from .directions import Direction


class PerturbationError(ValueError):
    pass


def parameter_name(model: torch.nn.Module, name: str, params: dict | None = None, buffers: set | None = None):
    """The model's parameter name for a checkpoint tensor name, or None for a buffer (not perturbed).

    Checkpoints and live models may differ by the base model's prefix (GPT-2's ``h.0...`` beside
    ``transformer.h.0...``); tied weights resolve to the shared parameter.

    Raises:
        PerturbationError: when the name fits no parameter (for MoE models whose experts transformers fuses,
            with what to do instead).
    """
    params = params if params is not None else dict(model.named_parameters(remove_duplicate=False))
    buffers = buffers if buffers is not None else {n for n, _ in model.named_buffers()}
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [name]
    if prefix:
        candidates.append(f"{prefix}.{name}")
        if name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1 :])
    for c in candidates:
        if c in params:
            return c
    if any(c in buffers for c in candidates):
        return None
    if name.rsplit(".", 1)[-1] in {b.rsplit(".", 1)[-1] for b in buffers}:
        return None  # a buffer older checkpoints saved elsewhere (per-layer rotary_emb.inv_freq)
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    hint = ""
    if ".experts." in name:
        hint = (
            f"; {kind} keeps its experts fused in transformers, so per-expert checkpoint tensors do not map to its "
            "parameters: checkpoint directions are unsupported for this model type (compute the direction from "
            "loaded models instead: difference(model_a, model_b))"
        )
    raise PerturbationError(f"tensor {name!r} is not a parameter of the model ({kind}){hint}")


def _resolve(model: torch.nn.Module, directions: Sequence[Direction]) -> dict[str, torch.nn.Parameter]:
    """Direction tensor name -> model parameter, checking names and shapes; tied aliases map to one parameter,
    and tensors that are buffers of the model (older Llama checkpoints' ``rotary_emb.inv_freq``) are skipped."""
    all_params = dict(model.named_parameters(remove_duplicate=False))
    buffers = {n for n, _ in model.named_buffers()}
    params: dict[str, torch.nn.Parameter] = {}
    for d in directions:
        for n in d.names():
            try:
                target = parameter_name(model, n, all_params, buffers)
            except PerturbationError as e:
                raise PerturbationError(f"direction {d.name!r}: {e}") from None
            if target is None:
                continue
            p = all_params[target]
            if tuple(p.shape) != tuple(d.shape(n)):
                raise PerturbationError(
                    f"direction {d.name!r}: tensor {n!r} has shape {list(d.shape(n))}, the model's is {list(p.shape)}"
                )
            params[n] = p
    return params


def _check_finite(d: Direction, n: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = "NaN" if bool(torch.isnan(t).any()) else "Inf"
        raise PerturbationError(f"direction {d.name!r} ({d.store.origin}): tensor {n!r} contains {bad}")


def check_compatible(model: torch.nn.Module, directions: Sequence[Direction]) -> None:
    """Raise before anything is written when a direction does not fit ``model`` (names, shapes) or holds NaN/Inf.

    Each direction tensor is read once (streamed); nothing is kept.
    """
    names = _resolve(model, directions)
    for d in directions:
        for n in d.names():
            if n in names:
                _check_finite(d, n, d.get(n))


class Perturbation:
    """Context manager that perturbs ``model`` along ``directions`` in place.

    Example:
        >>> with Perturbation(model, [d1, d2]) as pert:
        ...     pert.set_((0.1, -0.05))   # θ₀ + 0.1·d1 − 0.05·d2
        ...     evaluate(model)
        # weights are θ₀ again here, bit for bit, also if evaluate() raised

    Args:
        model: the model; its parameters are changed in place.
        directions: directions whose tensor names are the model's parameter names.
        direction_dtype: dtype the directions are kept in on the device (fp32 by default).
    """

    def __init__(
        self, model: torch.nn.Module, directions: Sequence[Direction], direction_dtype: torch.dtype = torch.float32
    ):
        if not directions:
            raise ValueError("Perturbation needs at least one direction")
        self.model = model
        self.directions = list(directions)
        params = _resolve(model, self.directions)
        # Tied parameters (embeddings shared with the head) are moved once.
        by_id: dict[int, str] = {}
        self.names: list[str] = []
        for n, p in params.items():
            if id(p) not in by_id:
                by_id[id(p)] = n
                self.names.append(n)
        self.params = {n: params[n] for n in self.names}
        self.pristine = {n: p.detach().clone() for n, p in self.params.items()}
        self.deltas: list[dict[str, torch.Tensor]] = []
        for d in self.directions:
            dev = {}
            for n in self.names:
                aliases = [m for m, p in params.items() if p is self.params[n]]
                src = next((m for m in aliases if m in set(d.names())), None)
                if src is not None:
                    dev[n] = d.get(src).to(device=self.params[n].device, dtype=direction_dtype)
                    _check_finite(d, src, dev[n])
            self.deltas.append(dev)
        self.coeffs: tuple[float, ...] = (0.0,) * len(self.directions)
        self._warned = False

    def __enter__(self) -> Perturbation:
        return self

    def __exit__(self, *exc) -> None:
        self.restore_()

    @torch.no_grad()
    def set_(self, coeffs: Sequence[float]) -> None:
        """Set the weights to θ₀ + Σ cᵢ·dᵢ (fp32 arithmetic, one cast)."""
        coeffs = tuple(float(c) for c in coeffs)
        if len(coeffs) != len(self.directions):
            raise ValueError(f"expected {len(self.directions)} coefficients, got {len(coeffs)}")
        if any(c != c or c in (float("inf"), float("-inf")) for c in coeffs):
            raise ValueError(f"coefficients must be finite, got {coeffs}")
        try:
            for n, p in self.params.items():
                w = None
                for c, delta in zip(coeffs, self.deltas, strict=True):
                    if c != 0.0 and n in delta:
                        if w is None:
                            w = self.pristine[n].to(torch.float32, copy=True)
                        w.add_(delta[n], alpha=c)
                p.copy_(self.pristine[n] if w is None else w)
                if w is not None and not self._warned and p.dtype != torch.float32:
                    self._check_resolution(n, p, w, coeffs)
        except BaseException:
            self.restore_()
            raise
        self.coeffs = coeffs

    def _check_resolution(self, n: str, p: torch.Tensor, w: torch.Tensor, coeffs: tuple[float, ...]) -> None:
        meant = w != self.pristine[n].float()  # elements the fp32 arithmetic moved
        if not meant.any():
            return
        changed = ((p != self.pristine[n]) & meant).sum().item() / meant.sum().item()
        if changed < 0.5:
            self._warned = True
            warn_caller(
                f"perturbation below the resolution of {p.dtype}: only {100 * changed:.0f}% of {n!r} changed at "
                f"coefficients {coeffs}; use a larger step or load the model in float32"
            )

    @torch.no_grad()
    def restore_(self) -> None:
        """Copy the pristine weights back (bit-exact)."""
        for n, p in self.params.items():
            p.copy_(self.pristine[n])
        self.coeffs = (0.0,) * len(self.directions)


def weights_fingerprint(model) -> str:
    """sha256 of every parameter's bytes: equal before and after a scan when the weights came back bit for bit."""
    from .directions import content_hash
    from .tensors import ModuleStore

    return content_hash(ModuleStore(model))
