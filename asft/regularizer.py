"""AsFT's regulariser λ·Σ_modules ‖C⊥·ΔW‖²_F, computed without any d_out × d_out (or d_out × d_in) matrix.

AsFT (Yang et al., arXiv 2506.08473) keeps a fine-tuning update ΔW close to the alignment direction
V = W_aligned − W_base of each adapted module by penalising the part of ΔW that C⊥ keeps. Three forms:

- ``reference``: C⊥ = I − Ĉ with Ĉ = V·Vᵀ/‖V‖_F, numerically what the released code computes (Ĉ is the
  Safe LoRA matrix; it is *not* a projector: its eigenvalues are σᵢ²/‖V‖_F);
- ``projector``: C⊥ = I − U_k·U_kᵀ, U_k the top-k left singular vectors of V: the exact orthogonal
  projector of the paper's equation 3 (d(dᵀd)⁻¹dᵀ) restricted to V's k main directions;
- ``aligned``: the ablation of the paper's Fig. 4(b), penalising the component *along* the alignment
  direction, ‖U_k·U_kᵀ·ΔW‖².

Two controls, so that an experiment can tell anchoring from shrinking:

- ``l2``: λ‖ΔW‖², a plain weight-decay-like penalty on the update (C⊥ = I);
- ``random``: C⊥ = I − R_k·R_kᵀ with R_k a seeded random orthonormal basis of the same rank k per module:
  the projector form with the alignment subspace replaced by chance.

With LoRA, ΔW = s·B·A has rank r, so (I − Ĉ)·B·A = B̃·A with B̃ = B − V(VᵀB)/‖V‖_F (d_out × r), and
‖B̃·A‖²_F = Σ (B̃ᵀB̃) ⊙ (A·Aᵀ): r × r products, two thin passes over V, O(r·d_out·d_in). The released
code materialises I − Ĉ and multiplies it by B·A: O(d_out²·d_in) work and d_out² memory per module.

LoRA scale: the released code penalises B·A, not s·B·A (s = α/r). We follow it by default
(``include_scale=False``); with ``include_scale=True`` the penalty is on the update actually applied,
s²‖C⊥·B·A‖². Sums are accumulated in fp32 (float64 inputs stay float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from landscape.geometry import random_basis, top_left_singular

FORMS = ("reference", "projector", "aligned", "l2", "random")
CONTROLS = ("l2", "random")


@dataclass
class ModuleAnchor:
    """The alignment direction of one adapted module.

    Attributes:
        name: the module's weight name (e.g. ``model.layers.0.self_attn.q_proj.weight``).
        V: W_aligned − W_base, shape (d_out, d_in).
        v_norm: ‖V‖_F.
        U: top-k left singular vectors of V, shape (d_out, k) (projector and aligned forms).
        R: a seeded random orthonormal basis of the same shape as U (the ``random`` control).
    """

    name: str
    V: torch.Tensor
    v_norm: float
    U: torch.Tensor | None = None
    R: torch.Tensor | None = None
    seed: int = 0

    def to(self, device, dtype=torch.float32) -> ModuleAnchor:
        U = None if self.U is None else self.U.to(device=device, dtype=dtype)
        R = None if self.R is None else self.R.to(device=device, dtype=dtype)
        return ModuleAnchor(self.name, self.V.to(device=device, dtype=dtype), self.v_norm, U, R, self.seed)

    def transposed(self) -> ModuleAnchor:
        """The anchor of a module that stores its weight as (d_in, d_out) (GPT-2's Conv1D), in the (d_out, d_in)
        layout every penalty here uses: V becomes Vᵀ and U the top left singular vectors of Vᵀ."""
        k = None if self.U is None else self.U.shape[1]
        return make_module_anchor(self.name, self.V.T.contiguous(), k=k, seed=self.seed)


def module_anchor(anchor, key: str, module: torch.nn.Module) -> ModuleAnchor:
    """The anchor of weight ``key`` in the (d_out, d_in) layout of the penalties, whatever ``module`` stores."""
    a = anchor.modules[key]
    return a.transposed() if is_transposed(module) else a


def is_transposed(module: torch.nn.Module) -> bool:
    """True for modules whose ``weight`` is (d_in, d_out): transformers' Conv1D (GPT-2), also under a peft layer."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(getattr(module, "base_layer", module), Conv1D)


def make_module_anchor(name: str, V: torch.Tensor, k: int | None = 8, seed: int = 0) -> ModuleAnchor:
    """Precompute what the forms need: ‖V‖_F, and the top-k left singular vectors when ``k`` is given.

    The singular vectors come from an exact SVD: it is computed once per module, and a randomised one
    (``torch.svd_lowrank``) missed the subspace badly on slowly decaying spectra and differed run to run.
    With ``k``, the ``random`` control's basis (seeded by ``seed`` and the module name) is drawn too.
    """
    Vf = V.detach().float() if V.dtype not in (torch.float32, torch.float64) else V.detach()
    if not bool(torch.isfinite(Vf).all()):
        bad = "NaN" if bool(torch.isnan(Vf).any()) else "Inf"
        raise ValueError(f"alignment direction of {name!r} contains {bad}: no anchor (nor penalty) can be built on it")
    norm = float(torch.linalg.matrix_norm(Vf))
    if norm == 0:
        raise ValueError(f"alignment direction of {name!r} is zero (the base and aligned weights are equal)")
    U = None
    if k is not None:
        if not 1 <= k <= min(Vf.shape):
            raise ValueError(f"k must be in [1, {min(Vf.shape)}] for {name!r}, got {k}")
        U = top_left_singular(Vf, k)
        R = random_basis(name, Vf.shape[0], k, seed, Vf.dtype)
        return ModuleAnchor(name, Vf, norm, U, R, seed)
    return ModuleAnchor(name, Vf, norm, U, None, seed)


def _check(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"Unknown regulariser form {form!r}. Available: {', '.join(FORMS)}")


def _basis(form: str, anchor: ModuleAnchor) -> torch.Tensor:
    """U_k (projector, aligned) or the seeded random R_k (random control)."""
    basis = anchor.R if form == "random" else anchor.U
    if basis is None:
        raise ValueError(f"form {form!r} needs the anchor built with k set (its top-k / random basis)")
    return basis


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def lora_penalty(
    form: str, anchor: ModuleAnchor, B: torch.Tensor, A: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """‖C·(scale·B·A)‖²_F for one LoRA module: C = C⊥ (reference, projector, random), I (l2) or C_aligned (aligned).

    Args:
        form: one of :data:`FORMS`.
        anchor: the module's :class:`ModuleAnchor` (on B's device).
        B: LoRA B, shape (d_out, r).
        A: LoRA A, shape (r, d_in).
        scale: the LoRA scale s applied to B·A (1.0 reproduces the released code).

    Returns:
        A scalar tensor (differentiable in A and B).
    """
    _check(form)
    dt = _acc_dtype(B)
    B, A = B.to(dt), A.to(dt)
    if form == "reference":
        V = anchor.V.to(device=B.device, dtype=dt)
        # VᵀB is computed as (BᵀV)ᵀ: BLAS reads V row-major there, 4-6x faster on CPU than V.T @ B.
        Bt = B - V @ (B.T @ V).T / anchor.v_norm
    elif form == "l2":
        Bt = B
    else:
        U = _basis(form, anchor).to(device=B.device, dtype=dt)
        along = U @ (U.T @ B)
        Bt = along if form == "aligned" else B - along
    # ‖B̃A‖²_F = tr(Aᵀ B̃ᵀ B̃ A) = Σ (B̃ᵀB̃) ⊙ (AAᵀ): only r × r matrices.
    return (scale * scale) * ((Bt.T @ Bt) * (A @ A.T)).sum()


def full_penalty(form: str, anchor: ModuleAnchor, delta: torch.Tensor) -> torch.Tensor:
    """‖C·ΔW‖²_F for a full-parameter update ΔW = W − W_aligned (shape d_out × d_in).

    The projector forms cost O(k·d_out·d_in) (‖(I − UUᵀ)ΔW‖² = ‖ΔW‖² − ‖UᵀΔW‖²). ΔW has full rank here,
    so the reference form needs Vᵀ·ΔW (d_in × d_in): as costly as the naive formula on square modules.
    """
    _check(form)
    dt = _acc_dtype(delta)
    D = delta.to(dt)
    if form == "reference":
        V = anchor.V.to(device=D.device, dtype=dt)
        return (D - V @ (V.T @ D) / anchor.v_norm).square().sum()
    if form == "l2":
        return D.square().sum()
    U = _basis(form, anchor).to(device=D.device, dtype=dt)
    along = (U.T @ D).square().sum()
    return along if form == "aligned" else D.square().sum() - along


def naive_lora_penalty(form: str, anchor: ModuleAnchor, B: torch.Tensor, A: torch.Tensor, scale: float = 1.0):
    """The formula as written (materialising C and ΔW): for tests and benchmarks only."""
    _check(form)
    d_out = B.shape[0]
    eye = torch.eye(d_out, dtype=B.dtype, device=B.device)
    if form == "reference":
        C = eye - anchor.V.to(B) @ anchor.V.to(B).T / anchor.v_norm
    elif form == "l2":
        C = eye
    else:
        Q = _basis(form, anchor).to(B)
        C = Q @ Q.T if form == "aligned" else eye - Q @ Q.T
    return ((C @ (scale * B @ A)) ** 2).sum()
