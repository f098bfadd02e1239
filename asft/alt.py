"""AsFT_Alt: when no base model exists, anchor on harmful directions estimated from harmful data.

Per target module, the gradient of the harmful-answer loss with respect to the weight (summed over a
few batches of harmful examples) points where a harmful fine-tune would move it. Its top-k left
singular vectors span the harmful directions; training then penalises the component of ΔW along them
(the ``aligned`` form applied to this harmful anchor).
"""

from __future__ import annotations

import torch

from .anchor import Anchor, module_weight_names
from .data import SFTRecord, collate, encode_record
from .regularizer import make_module_anchor


def harmful_anchor(
    model, tokenizer, harmful: list[SFTRecord], target_modules=("q_proj", "v_proj"), k: int = 8, batch_size: int = 8
) -> Anchor:
    """Estimate per-module harmful directions from the harmful-loss gradient; returns an :class:`Anchor`."""
    if not harmful:
        raise ValueError("AsFT_Alt needs harmful examples to estimate harmful directions")
    names = module_weight_names([n for n, _ in model.named_parameters()], list(target_modules))
    if not names:
        raise ValueError(f"the model has no module among {list(target_modules)}")
    params = {n: model.get_parameter(n) for n in names}
    grads = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    fn = collate(tokenizer.pad_token_id)
    dev = next(model.parameters()).device
    try:
        for i in range(0, len(harmful), batch_size):
            batch = fn([encode_record(tokenizer, r) for r in harmful[i : i + batch_size]])
            loss = model(**{k_: v.to(dev) for k_, v in batch.items()}).loss
            g = torch.autograd.grad(loss, list(params.values()))
            for n, gi in zip(params, g, strict=True):
                grads[n] -= gi.float()  # descent direction: where a harmful fine-tune moves the weight
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(was[n])
    modules = {n: make_module_anchor(n, grads[n], k=k) for n in names}
    return Anchor(modules, [{"role": "harmful-gradient", "examples": len(harmful)}])
