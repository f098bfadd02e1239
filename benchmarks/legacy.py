"""The perturbation code as it was before memory placements (issue 20), kept so benchmarks measure against it.

- :class:`LegacyPerturbation`: the HF engine: a pristine copy of every tensor a direction names and every direction
  in fp32 on the model's device; θ = θ₀ + Σ cᵢ·dᵢ computed per whole tensor in a fresh fp32 temporary.
- :class:`LegacyWorkerExtension`: the vLLM workers' extension: pristine tensors and fp32 directions on every worker,
  and every touched tensor materialised in fp32 and in the model dtype before one ``reload_weights`` call.

Not used by the toolkit. ``bench_memory.py`` measures both against the placements of :mod:`landscape.memory`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from landscape._pkg import warn_caller
from landscape.directions import Direction
from landscape.perturb import _check_finite, _resolve
from landscape.vllm_backend import whole_layers


class LegacyPerturbation:
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

    def __enter__(self) -> LegacyPerturbation:
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


class LegacyWorkerExtension:
    """Methods added to every vLLM worker (``self.model_runner`` and ``self.device`` come from the worker)."""

    def landscape_load(self, checkpoint: str, directions: list[str], dtype: str | None = None) -> int:
        """Keep the pristine tensors of every layer the directions touch, and the directions, on this worker."""
        from landscape.directions import load_direction
        from landscape.tensors import open_store

        dev = getattr(self, "device", None) or torch.device("cpu")
        dirs = [load_direction(p["path"] if isinstance(p, dict) else p) for p in directions]
        store = open_store(checkpoint)
        touched = sorted({n for d in dirs for n in d.names()})
        missing = [n for n in touched if n not in set(store.keys())]
        if missing:
            raise KeyError(f"{checkpoint} has no tensor {missing[0]!r} (named by a direction)")
        names = whole_layers(touched, store.keys())
        self._ls_dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or store.dtype(names[0]))
        self._ls_pristine = {n: store.get(n).to(dev) for n in names}
        self._ls_dirs = [{n: d.get(n).to(dev, torch.float32) for n in d.names()} for d in dirs]
        return len(names)

    @torch.no_grad()
    def landscape_weights(self, coeffs: list[float]) -> list[tuple[str, torch.Tensor]]:
        """θ₀ + Σ cᵢ·dᵢ for every kept tensor (fp32 arithmetic, one cast); all zeros gives θ₀ exactly."""
        weights = []
        for n, w0 in self._ls_pristine.items():
            w = None
            for c, d in zip(coeffs, self._ls_dirs, strict=True):
                if c != 0.0 and n in d:
                    if w is None:
                        w = w0.to(torch.float32, copy=True)
                    w.add_(d[n], alpha=float(c))
            weights.append((n, w0.to(self._ls_dtype) if w is None else w.to(self._ls_dtype)))
        return weights

    def landscape_set(self, coeffs: list[float]) -> None:
        """Reload the model's weights at θ₀ + Σ cᵢ·dᵢ through the model runner's supported path."""
        weights = self.landscape_weights(coeffs)
        runner = self.model_runner
        if hasattr(runner, "reload_weights"):
            runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        else:  # vLLM before reload_weights existed
            runner.model.load_weights(weights=weights)
