"""Safe LoRA (Hsu et al., 2024) as a post-hoc baseline.

For each LoRA module with update ΔW = s·B·A, project onto the alignment subspace with
Ĉ = V·Vᵀ/‖V‖_F (V = W_aligned − W_base of that module) and compare: when the cosine (Frobenius)
between ΔW and Ĉ·ΔW is below ``threshold`` the module's update strays from the alignment direction, and
B is replaced by Ĉ·B, so that the update becomes Ĉ·ΔW. Modules above the threshold are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .anchor import Anchor
from .regularizer import module_anchor


@dataclass
class SafeLoraReport:
    projected: list[str]
    similarities: dict[str, float]


def project_onto_alignment(anchor_V: torch.Tensor, v_norm: float, B: torch.Tensor) -> torch.Tensor:
    """Ĉ·B = V(VᵀB)/‖V‖_F without forming the d_out × d_out matrix."""
    V = anchor_V.to(B)
    return V @ (B.T @ V).T / v_norm  # (BᵀV)ᵀ: the fast BLAS path for VᵀB


@torch.no_grad()
def safe_lora_(peft_model, anchor: Anchor, threshold: float = 0.5) -> SafeLoraReport:
    """Apply Safe LoRA in place to a peft model's LoRA B matrices; returns which modules were projected."""
    projected, sims = [], {}
    for name, mod in peft_model.named_modules():
        if not (hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {})):
            continue
        key = f"{name}.weight".removeprefix("base_model.model.")
        if key not in anchor.modules:
            continue
        a = module_anchor(anchor, key, mod)
        B = mod.lora_B["default"].weight
        A = mod.lora_A["default"].weight.float()
        Bf = B.float()
        CB = project_onto_alignment(a.V, a.v_norm, Bf)
        # cos(ΔW, ĈΔW) with ΔW = B·A, from r × r products: ⟨XA, YA⟩ = Σ (XᵀY) ⊙ (AAᵀ)
        AAt = A @ A.T
        dot = ((Bf.T @ CB) * AAt).sum()
        n1 = ((Bf.T @ Bf) * AAt).sum().clamp_min(0).sqrt()
        n2 = ((CB.T @ CB) * AAt).sum().clamp_min(0).sqrt()
        sim = float(dot / (n1 * n2)) if n1 > 0 and n2 > 0 else 1.0
        sims[key] = sim
        if sim < threshold:
            B.copy_(CB.to(B.dtype))
            projected.append(key)
    return SafeLoraReport(projected, sims)
