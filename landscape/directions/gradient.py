"""Worst-case directions: the steepest descent of a compliance loss at a checkpoint.

``d_worst = −∇_θ L(θ)`` at θ = the checkpoint, where L is the mean negative log-likelihood, per answer token, of
compliance targets (e.g. AdvBench's affirmative ``target`` openings, "Sure, here is ...") after harmful prompts
that the evaluation does not use. Moving along +d_worst is, to first order, the fastest way to make the model
comply: the "worst-case" direction of Chen et al. (ICLR 2026), against which random directions look flat. It is
oriented like d_harm (from the aligned model towards compliance) and normalised like the other directions
(``normalize(d, checkpoint, "layer")``).

One forward and backward pass per batch in float32 on ``device``; the gradient of every weight is held (the
model's size again, on the device): on a model too large for that, restrict ``names``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..tensors import open_store
from .core import Direction, new_meta, stream_map


def pairs_digest(pairs: list[tuple[str, str]]) -> str:
    """sha256 of the (prompt, target) pairs, in order (recorded with the direction)."""
    h = hashlib.sha256()
    for p, t in pairs:
        for s in (p, t):
            b = s.encode("utf-8")
            h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def compliance_loss(model, tokenizer, pairs, batch_size: int = 8, backward: bool = False) -> float:
    """Mean NLL per target token of ``pairs`` (prompt in the chat template, target as the assistant's answer
    left open: the opening of a reply, not a finished turn); with ``backward`` its gradient is accumulated into
    the parameters' ``.grad``."""
    from ..text import encode_chat, pad_id_of, right_pad

    enc = [encode_chat(tokenizer, p, t, close=False) for p, t in pairs]
    total = sum(len(e.answer_ids) for e in enc)
    if total == 0:
        raise ValueError("compliance loss: no target tokens (every target encodes to nothing)")
    device = next(model.parameters()).device
    loss_sum = 0.0
    for at in range(0, len(enc), batch_size):
        chunk = enc[at : at + batch_size]
        ids, mask, labels = right_pad([e.ids for e in chunk], pad_id_of(tokenizer), [
            [-100] * e.prompt_len + e.answer_ids for e in chunk
        ])  # fmt: skip
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with torch.set_grad_enabled(backward):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            keep = target != -100
            loss = torch.nn.functional.cross_entropy(logits[keep].float(), target[keep], reduction="sum") / total
            if backward:
                loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum


def gradient_direction(
    checkpoint,
    pairs: list[tuple[str, str]],
    out: str | Path | None = None,
    name: str | None = "d_worst",
    names: list[str] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = False,
) -> Direction:
    """``d_worst = −∇_θ`` (compliance NLL of ``pairs``) at ``checkpoint`` (a model directory or GGUF file).

    Args:
        checkpoint: where the gradient is taken (the aligned model).
        pairs: (harmful prompt, compliance target) pairs, disjoint from the evaluation prompts.
        out: write the direction here (atomically); else it is returned in memory.
        names: restrict to these checkpoint tensors (default: every floating-point tensor the checkpoint holds).
        batch_size, device: of the forward/backward passes.

    Raises:
        ValueError: no pairs, a checkpoint tensor the model does not hold, or a non-finite gradient (naming the
            checkpoint and the tensor). Nothing is written then.
    """
    from ..gguf import resolve_checkpoint
    from ..loading import load_model
    from ..provenance import checkpoint_hash, model_type

    if not pairs:
        raise ValueError("gradient direction: no (prompt, target) pairs")
    store = open_store(resolve_checkpoint(checkpoint))
    keys = store.keys()
    have = [n for n in keys if store.dtype(n).is_floating_point]
    if names is not None:
        floating = set(have)
        missing = [n for n in names if n not in floating]
        if missing:
            raise KeyError(f"{store.origin}: no floating-point tensor {missing[0]!r}")
        have = list(names)
    model, tok = load_model(checkpoint, dtype="float32", device=device)
    params = model.state_dict(keep_vars=True)  # tied weights appear under each name they are saved as
    lacking = [n for n in have if n not in params]
    if lacking:
        raise KeyError(f"{store.origin}: the model loaded from it holds no parameter {lacking[0]!r}")
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    loss = compliance_loss(model, tok, pairs, batch_size=batch_size, backward=True)

    def one(n: str) -> torch.Tensor:
        var = params[n]
        g = var.grad if isinstance(var, torch.nn.Parameter) else None
        if g is None:
            return torch.zeros(tuple(var.shape), dtype=torch.float32)
        if not torch.isfinite(g).all():
            raise ValueError(f"{store.origin}: the compliance loss's gradient of {n!r} is not finite (loss {loss})")
        return (-g).detach().float().cpu()

    meta = new_meta(
        "gradient",
        name=name,
        normalization="none",
        objective="compliance_nll",
        loss=loss,
        n_pairs=len(pairs),
        pairs_sha256=pairs_digest(pairs),
        sources=[
            {
                "path": store.origin,
                "role": "at",
                "model_type": model_type(store.origin),
                "sha256": checkpoint_hash(store.origin),
            }
        ],  # fmt: skip
    )
    try:
        return stream_map(sorted(have), one, meta, out=out, progress=progress)
    finally:
        for p in model.parameters():
            p.grad = None
