"""Move a model's weights along directions, in place on its device, and put them back bit for bit.

θ = θ₀ + Σ cᵢ·dᵢ is computed block by block in fp32 in one scratch buffer from a pristine copy of θ₀ and cast to
the model's dtype once, so no error accumulates from point to point. Restoring copies the pristine tensors back
(never "subtract what was added"). Where the pristine copy and the directions live (device or host memory, in
fp32 or the model's dtype, seeded random directions stored or drawn again on the device) is a
:class:`~landscape.memory.Placement`; the bytes each holds are its :class:`~landscape.memory.MemoryPlan`. Peng et
al.'s code instead rebuilds a CPU fp32 state dict and copies it to the GPU with ``load_state_dict`` at every
grid point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._pkg import warn_caller
from .directions import Direction
from .memory import MemoryPlan, Placement, get_placement, scratch_bytes
from .tensors import RandomStore, blocks, gaussian_block


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
        moves = False
        for n in d.names():
            if n in names:
                t = d.get(n)
                _check_finite(d, n, t)
                moves = moves or bool(t.any())
        if not moves:
            raise PerturbationError(zero_message(d))


def zero_message(d: Direction) -> str:
    return (
        f"direction {d.name!r} ({d.store.origin}) is zero on every weight of the model: moving along it changes "
        "nothing, so an EPL or a scan along it would measure the centre (were its two checkpoints the same, e.g. "
        "--harmful given the aligned model itself?)"
    )


@dataclass
class _Drawn:
    """A seeded random direction's tensor, drawn again at every point: its name, shape, seed and factor."""

    name: str
    shape: tuple[int, ...]
    seed: int
    scale: torch.Tensor | None


def _scaled(g: torch.Tensor, scale: torch.Tensor | None, shape: tuple[int, ...], a: int, b: int) -> torch.Tensor:
    """Multiply ``g`` (elements ``[a, b)``, whole rows, of a tensor of ``shape``) by its share of ``scale`` (0-d, per
    row (rows, 1, ...), or per column (1, cols): it broadcasts against ``shape``), in place, as
    :func:`~landscape.directions.normalize` multiplies the whole tensor."""
    if scale is None:
        return g
    if scale.dim() == 0 or len(shape) < 2:
        return g.mul_(scale)
    r0, r1 = a // _row(shape), b // _row(shape)
    rows = g.view(r1 - r0, *shape[1:])
    rows.mul_(scale if scale.shape[0] == 1 else scale[r0:r1])
    return g


def _row(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape[1:]:
        n *= s
    return n


class Perturbation:
    """Context manager that perturbs ``model`` along ``directions`` in place.

    Example:
        >>> with Perturbation(model, [d1, d2], placement="device") as pert:
        ...     pert.set_((0.1, -0.05))   # θ₀ + 0.1·d1 − 0.05·d2
        ...     evaluate(model)
        # weights are θ₀ again here, bit for bit, also if evaluate() raised

    Args:
        model: the model; its parameters are changed in place.
        directions: directions whose tensor names are the model's parameter names.
        placement: where the pristine copy and the directions live (:data:`~landscape.memory.PLACEMENTS`);
            ``device-fp32`` keeps everything on the device with fp32 directions, as before placements existed.
    """

    def __init__(self, model: torch.nn.Module, directions: Sequence[Direction], placement: str | Placement = "device"):
        if not directions:
            raise ValueError("Perturbation needs at least one direction")
        self.model = model
        self.directions = list(directions)
        self.placement = get_placement(placement)
        params = _resolve(model, self.directions)
        # Tied parameters (embeddings shared with the head) are moved once.
        by_id: dict[int, str] = {}
        for n, p in params.items():
            by_id.setdefault(id(p), n)
        canonical = {n: by_id[id(p)] for n, p in params.items()}
        self.params = {n: params[n] for n in dict.fromkeys(canonical.values())}
        pl = self.placement
        # terms[i][name]: direction i's tensor for that parameter (stored) or how to draw it again (_Drawn)
        self.terms: list[dict[str, torch.Tensor | _Drawn]] = []
        for d in self.directions:
            drawn = pl.regenerate_random and isinstance(d.store, RandomStore)
            terms: dict[str, torch.Tensor | _Drawn] = {}
            for src in d.names():
                if src not in canonical:
                    continue  # a buffer of the model (not perturbed)
                n = canonical[src]
                if n in terms:
                    continue
                p = self.params[n]
                if drawn:
                    if d.store.zero(src):
                        continue
                    scale = d.store.scale(src)
                    if scale is not None:
                        _check_finite(d, src, scale)
                        scale = scale.to(p.device, torch.float32)
                    terms[n] = _Drawn(src, tuple(d.shape(src)), d.store.seed, scale)
                    continue
                dtype = p.dtype if pl.direction_dtype == "model" else torch.float32
                t = d.get(src).to(dtype=dtype)
                _check_finite(d, src, t)  # also after the cast: fp16 overflows where fp32 does not
                if not bool(t.any()):
                    continue  # a zero tensor (blacklisted) moves nothing
                terms[n] = self._place(t.contiguous(), p, pl.directions)  # viewed flat, block by block
            if not terms:
                raise PerturbationError(zero_message(d))
            self.terms.append(terms)
        self.touched = [n for n in self.params if any(n in t for t in self.terms)]
        self.pristine = {
            n: self._place(self.params[n].detach().contiguous(), self.params[n], pl.pristine, copy=True)
            for n in self.touched
        }
        self.drawn_on = sorted(
            {str(self.params[n].device.type) for t in self.terms for n, x in t.items() if isinstance(x, _Drawn)}
        )
        self._scratch: dict[tuple[torch.device, int], torch.Tensor] = {}
        self.coeffs: tuple[float, ...] = (0.0,) * len(self.directions)
        self._warned = False

    @staticmethod
    def _place(t: torch.Tensor, p: torch.Tensor, where: str, copy: bool = False) -> torch.Tensor:
        """``t`` kept where the placement says: on ``p``'s device, or in host memory (pinned for a CUDA model)."""
        if where == "device" or p.device.type == "cpu":
            return t.to(p.device, copy=copy) if copy or t.device != p.device else t
        host = t.to("cpu", copy=True)
        return host.pin_memory() if p.device.type == "cuda" else host

    def _buffer(self, device: torch.device, slot: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Scratch block ``slot`` on ``device``, at least ``n`` elements: allocated once (the largest block), so a
        point allocates nothing (0: θ, 1: a drawn direction, 2: a stored block in fp32, 3 and 4: the resolution
        check's masks)."""
        key = (device, slot)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < n:
            size = max((b - a for m in self.touched for a, b in blocks(tuple(self.params[m].shape))), default=n)
            buf = self._scratch[key] = torch.empty(max(size, n), dtype=dtype, device=device)
        return buf[:n]

    def __enter__(self) -> Perturbation:
        return self

    def __exit__(self, *exc) -> None:
        self.restore_()

    @torch.no_grad()
    def set_(self, coeffs: Sequence[float]) -> None:
        """Set the weights to θ₀ + Σ cᵢ·dᵢ (fp32 arithmetic block by block, one cast)."""
        coeffs = tuple(float(c) for c in coeffs)
        if len(coeffs) != len(self.directions):
            raise ValueError(f"expected {len(self.directions)} coefficients, got {len(coeffs)}")
        if any(c != c or c in (float("inf"), float("-inf")) for c in coeffs):
            raise ValueError(f"coefficients must be finite, got {coeffs}")
        try:
            for n in self.touched:
                active = [(c, t[n]) for c, t in zip(coeffs, self.terms, strict=True) if c != 0.0 and n in t]
                p, p0 = self.params[n], self.pristine[n]
                if not active:
                    p.copy_(p0, non_blocking=True)
                    continue
                out = p if p.is_contiguous() else torch.empty(p.shape, dtype=p.dtype, device=p.device)
                flat, flat0 = out.view(-1), p0.reshape(-1)
                shape = tuple(p.shape)
                for k, (a, b) in enumerate(blocks(shape)):
                    w = self._buffer(p.device, 0, b - a)
                    w.copy_(flat0[a:b], non_blocking=True)
                    # each term as c·d rounded, then added (w + c·d, two roundings, as Peng et al.'s loop and any
                    # `w + alpha * d` compute it): add_(d, alpha=c) fuses the two into one FMA on vectorised CPUs,
                    # which moves ~1 % of the elements by an ulp, enough to change greedy answers past an edge
                    for c, term in active:
                        if isinstance(term, _Drawn):
                            g = gaussian_block(term.name, term.shape, term.seed, k, self._buffer(p.device, 1, b - a))
                            w.add_(_scaled(g, term.scale, shape, a, b).mul_(c))
                        elif term.dtype == torch.float32 and term.device == p.device:
                            w.add_(torch.mul(term.view(-1)[a:b], c, out=self._buffer(p.device, 2, b - a)))
                        else:  # converted into a scratch block (exact: bf16/fp16 -> fp32), as add_ would promote it
                            x = self._buffer(p.device, 2, b - a)
                            x.copy_(term.view(-1)[a:b], non_blocking=True)
                            w.add_(x.mul_(c))
                    flat[a:b].copy_(w)
                    if k == 0 and not self._warned and p.dtype != torch.float32:  # each tensor's first block
                        self._check_resolution(n, flat[a:b], flat0[a:b], w, coeffs)
                if out is not p:
                    p.copy_(out)
        except BaseException:
            self.restore_()
            raise
        self.coeffs = coeffs

    def _check_resolution(self, n: str, p: torch.Tensor, p0: torch.Tensor, w: torch.Tensor, coeffs) -> None:
        """Warn once when fewer than half of the elements the fp32 arithmetic moved changed after the cast."""
        x = self._buffer(p.device, 2, p.numel())
        x.copy_(p0, non_blocking=True)  # θ₀'s block in fp32
        meant = torch.ne(w, x, out=self._buffer(p.device, 3, p.numel(), torch.bool))
        total = int(torch.count_nonzero(meant))  # (a sum would cast the mask to int64 first)
        if not total:
            return
        changed = torch.ne(p, p0.to(p.device, non_blocking=True), out=self._buffer(p.device, 4, p.numel(), torch.bool))
        share = int(torch.count_nonzero(changed.logical_and_(meant))) / total
        if share < 0.5:
            self._warned = True
            warn_caller(
                f"perturbation below the resolution of {p.dtype}: only {100 * share:.0f}% of {n!r} changed at "
                f"coefficients {coeffs}; use a larger step or load the model in float32"
            )

    @torch.no_grad()
    def restore_(self) -> None:
        """Copy the pristine weights back (bit-exact)."""
        for n in self.touched:
            self.params[n].copy_(self.pristine[n])
        self.coeffs = (0.0,) * len(self.directions)

    def plan(self) -> MemoryPlan:
        """The bytes this perturbation holds beyond the model, counted from the tensors it keeps."""
        from .memory import MemoryPlan

        def nbytes(t: torch.Tensor) -> int:
            return t.numel() * t.element_size()

        dev = host = 0
        first = next(iter(self.params.values()))
        parts = {"pristine": 0, "directions": 0, "scales": 0, "scratch": 0}
        kept = [("pristine", t) for t in self.pristine.values()]
        for terms in self.terms:
            for x in terms.values():
                if isinstance(x, _Drawn):
                    if x.scale is not None:
                        kept.append(("scales", x.scale))
                else:
                    kept.append(("directions", x))
        parts["scratch"] = sum(t.numel() * t.element_size() for t in self._scratch.values()) or scratch_bytes(
            [tuple(self.params[m].shape) for m in self.touched],
            first.dtype,
            drawn=any(isinstance(x, _Drawn) for t in self.terms for x in t.values()),
            converted=any(
                not isinstance(x, _Drawn) and (x.dtype != torch.float32 or x.device != first.device)
                for t in self.terms
                for x in t.values()
            ),
        )
        dev += parts["scratch"]
        for part, t in kept:
            parts[part] += nbytes(t)
            if t.device.type == "cpu" and next(iter(self.params.values())).device.type != "cpu":
                host += nbytes(t)
            else:
                dev += nbytes(t)
        model_bytes = sum(nbytes(p) for p in {id(p): p for p in self.model.parameters()}.values())
        return MemoryPlan(
            placement=self.placement.name,
            model_bytes=model_bytes,
            device_bytes=dev,
            host_bytes=host,
            same_memory=first.device.type == "cpu",
            stored_directions=sum(not any(isinstance(x, _Drawn) for x in t.values()) for t in self.terms),
            regenerated_directions=sum(any(isinstance(x, _Drawn) for x in t.values()) for t in self.terms),
            parts=parts,
        )


def weights_fingerprint(model) -> str:
    """sha256 of every parameter's bytes: equal before and after a scan when the weights came back bit for bit."""
    from .directions import content_hash
    from .tensors import ModuleStore

    return content_hash(ModuleStore(model))
