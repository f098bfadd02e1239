"""Safe LoRA (Hsu et al., 2024) as a post-hoc baseline, with IBM's two selection modes.

For each LoRA module with update ΔW = s·B·A, project onto the alignment subspace with
Ĉ = V·Vᵀ/‖V‖_F (V = W_aligned − W_base of that module) and measure the cosine (Frobenius) between ΔW and
Ĉ·ΔW. Modules whose update strays from the alignment direction get B replaced by Ĉ·B, so that the update
becomes Ĉ·ΔW. Which modules stray, as IBM's release decides it:

- ``threshold`` mode: every module whose cosine, rounded to 5 decimals, is ``<=`` the threshold τ;
- ``number`` mode (IBM's default): the ``number`` modules with the lowest cosines.

IBM's release reads its τ from its configuration per model; no single τ is "the" published default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .anchor import Anchor
from .regularizer import module_anchor

MODES = ("threshold", "number")


@dataclass
class SafeLoraReport:
    projected: list[str]
    similarities: dict[str, float]
    mode: str = "threshold"


def project_onto_alignment(anchor_V: torch.Tensor, v_norm: float, B: torch.Tensor) -> torch.Tensor:
    """Ĉ·B = V(VᵀB)/‖V‖_F without forming the d_out × d_out matrix."""
    V = anchor_V.to(B)
    return V @ (B.T @ V).T / v_norm  # (BᵀV)ᵀ: the fast BLAS path for VᵀB


@torch.no_grad()
def safe_lora_(
    peft_model, anchor: Anchor, threshold: float = 0.5, mode: str = "threshold", number: int = 1
) -> SafeLoraReport:
    """Apply Safe LoRA in place to a peft model's LoRA B matrices; returns which modules were projected.

    Args:
        peft_model: a peft model with LoRA adapters ("default").
        anchor: the alignment directions per module.
        threshold: τ of ``threshold`` mode (cosines rounded to 5 decimals, ``<=`` projects, as IBM's code).
        mode: ``threshold`` or ``number``.
        number: how many modules ``number`` mode projects (the lowest cosines; ties keep module order).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown Safe LoRA mode {mode!r}. Available: {', '.join(MODES)}")
    if mode == "number" and number < 0:
        raise ValueError(f"Safe LoRA number must be >= 0, got {number}")
    sims: dict[str, float] = {}
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, mod in peft_model.named_modules():
        if not (hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {})):
            continue
        key = f"{name}.weight".removeprefix("base_model.model.").replace(".base_layer", "")
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
        sims[key] = float(dot / (n1 * n2)) if n1 > 0 and n2 > 0 else 1.0
        found[key] = (B, CB)
    if mode == "threshold":
        chosen = [k for k, c in sims.items() if round(c, 5) <= threshold]
    else:
        chosen = sorted(sims, key=lambda k: sims[k])[:number]
    for key in chosen:
        B, CB = found[key]
        B.copy_(CB.to(B.dtype))
    return SafeLoraReport([k for k in sims if k in chosen], sims, mode)
