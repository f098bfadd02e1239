"""Fine-tuning with AsFT or a baseline, from one :class:`~asft.config.AsftConfig` to a saved model.

:func:`fine_tune` checks everything first (config, data, model, anchor and its verification), then trains
and writes into ``output_dir``: the fine-tuned model (merged, loadable with ``from_pretrained``), the LoRA
adapter, the anchor's verification (``anchor_verification.json``), the training log (``train_log.json``) and
the update's trajectory (``trajectory.json``, :mod:`asft.trajectory`).
``python -m asft.train`` is this function behind a command line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import AsftConfig


@dataclass
class TrainResult:
    """What a fine-tuning run produced.

    Attributes:
        out: the output directory.
        model_dir: the fine-tuned model (merged weights + tokenizer).
        verification: the anchor check the run relied on (None for methods without an anchor check).
        log: the Trainer's log history.
        seconds: wall time.
        n_train, n_harmful: training examples, and how many of them are harmful.
        safelora: Safe LoRA's projection report (method ``safelora``).
    """

    out: Path
    model_dir: Path
    verification: dict | None
    log: list[dict]
    seconds: float
    n_train: int
    n_harmful: int
    safelora: dict | None = None


def training_records(cfg: AsftConfig):
    """The training examples: the data file, re-mixed to n task + ⌊p·n⌋ harmful samples when asked."""
    from .data import is_harmful, load_sft_records, mix

    records = load_sft_records(cfg.data)
    if cfg.n is None and cfg.p is None:
        return records
    task = [r for r in records if not is_harmful(r)]
    harm = [r for r in records if is_harmful(r)]
    n = cfg.n if cfg.n is not None else len(task)
    p = cfg.p if cfg.p is not None else len(harm) / max(1, len(task))
    return mix(task, harm, n, p, seed=cfg.seed)


def build_anchor(cfg: AsftConfig, model, tokenizer, records):
    """The anchor the method trains on: d_aligned (verified for ``asft``), or AsFT_Alt's harmful directions."""
    from .anchor import load_anchor, verify
    from .data import is_harmful

    if cfg.method == "alt":
        from .alt import harmful_anchor
        from .data import load_sft_records

        held = load_sft_records(cfg.alt_harmful)
        train = {(r.instruction, r.input, r.output) for r in records}
        overlap = [r for r in held if (r.instruction, r.input, r.output) in train]
        if overlap:
            raise ValueError(
                f"{cfg.alt_harmful}: {len(overlap)} of its {len(held)} examples are in the training data "
                f"(e.g. {overlap[0].instruction[:60]!r}); AsFT_Alt needs a harmful set disjoint from --data"
            )
        return harmful_anchor(
            model, tokenizer, [r for r in held if is_harmful(r)] or held, cfg.target_modules, k=cfg.k
        )
    anchor = load_anchor(
        cfg.anchor,
        base=cfg.base,
        aligned=cfg.aligned if cfg.anchor is None else None,
        target_modules=cfg.target_modules,
        k=cfg.k,
        seed=cfg.control_seed,
    )
    if cfg.method == "asft":
        verify(
            anchor,
            cfg.report,
            allow_unverified=cfg.allow_unverified_anchor,
            min_ratio=cfg.anchor_min_ratio,
            model_dir=cfg.aligned,
        )
    return anchor


def _write_card(model_dir: Path, cfg: AsftConfig, anchor) -> None:
    """A model card that says how the model was trained and whether its anchor was verified or overridden."""
    from landscape.io import atomic_write_text

    v = anchor.verification if anchor is not None else None
    if anchor is None:
        status = "no anchor (plain SFT)"
    elif v is None:
        status = "no anchor verification (this method does not check one)"
    elif v.passed:
        status = f"anchor verified: EPL ratio d_aligned/d_harm {v.ratio:.2f} ({v.report_path})"
    else:
        status = "anchor NOT verified, trained under --allow_unverified_anchor: " + "; ".join(v.reasons)
    lines = [
        f"# Fine-tuned from {cfg.aligned}",
        "",
        f"- method: {cfg.method} (form {cfg.effective_form}, lambda {cfg.effective_lambda}, mode {cfg.mode}, "
        f"recipe {cfg.recipe})",
        f"- target modules: {', '.join(cfg.target_modules or [])}",
        f"- data: {cfg.data} (n {cfg.n}, p {cfg.p}), seed {cfg.seed}",
        f"- {status}",
        "",
        "Written by safety-landscape's asft.fine_tune; anchor_verification.json beside it holds the full report.",
    ]
    atomic_write_text(model_dir / "README.md", "\n".join(lines) + "\n")


def fine_tune(cfg: AsftConfig) -> TrainResult:
    """Train as ``cfg`` says and save the results; nothing is written before every check passes."""
    from landscape.io import atomic_write_json
    from landscape.loading import load_model

    from .data import SFTDataset, collate, is_harmful
    from .trainer import AsftTrainer

    cfg.check_run()
    t0 = time.perf_counter()
    records = training_records(cfg)
    n_harm = sum(is_harmful(r) for r in records)
    model, tok = load_model(cfg.aligned, dtype="float32", device=cfg.device)
    cfg.resolve_target_modules(model)
    # plain SFT trains without an anchor; given one (--anchor / --base), it is kept for the record
    needs_anchor = cfg.method != "sft" or cfg.anchor is not None or cfg.base is not None
    anchor = build_anchor(cfg, model, tok, records) if needs_anchor else None
    trainer = AsftTrainer(
        model=model,
        args=cfg,
        anchor=anchor,
        train_dataset=SFTDataset(tok, records),
        data_collator=collate(tok.pad_token_id),
    )
    traj = None
    if cfg.trajectory_steps:
        from .trajectory import Trajectory, callback

        # d_aligned from --base, else from the anchor's file (for the methods whose --anchor is d_aligned)
        own = cfg.anchor if cfg.base is None and cfg.method in ("asft", "sft", "safelora") else None
        traj = Trajectory(cfg.aligned, base=cfg.base, plane=cfg.trajectory_plane or (), d_aligned=own)
        trainer.add_callback(callback(trainer, traj, cfg.trajectory_steps))
    trainer.train()
    safelora = None
    if cfg.method == "safelora":
        from .safe_lora import safe_lora_

        rep = safe_lora_(trainer.model, anchor, cfg.safelora_threshold, cfg.safelora_mode, cfg.safelora_number)
        safelora = {"projected": rep.projected, "similarities": rep.similarities, "mode": rep.mode}

    out = Path(cfg.output_dir)
    model_dir = out / "model"
    if not trainer.is_world_process_zero():  # under torchrun only rank 0 writes
        return TrainResult(
            out, model_dir, None, trainer.state.log_history, time.perf_counter() - t0, len(records), n_harm
        )
    out.mkdir(parents=True, exist_ok=True)
    final = trainer.model
    if cfg.mode == "lora":
        final.save_pretrained(out / "adapter")
        final = final.merge_and_unload()
    final.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    _write_card(model_dir, cfg, anchor)
    if traj is not None:
        traj.save(out)
    for f in model_dir.iterdir():
        f.chmod(0o644)
    verification = anchor.verification if anchor is not None else None
    v = verification.as_dict() if verification else None
    if verification is not None and verification.report is not None:
        v["report"] = verification.report
    sources = anchor.sources if anchor is not None else []
    atomic_write_json(
        out / "anchor_verification.json", {"method": cfg.method, "verification": v, "anchor_sources": sources}
    )
    result = TrainResult(
        out, model_dir, v, trainer.state.log_history, time.perf_counter() - t0, len(records), n_harm, safelora
    )
    atomic_write_json(
        out / "train_log.json",
        {
            "config": cfg.to_dict(),
            "log": result.log,
            "seconds": result.seconds,
            "n_train": len(records),
            "n_harmful": n_harm,
            "safelora": safelora,
        },
    )
    return result
