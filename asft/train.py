"""Fine-tune with AsFT (or a baseline) on an anchor that ``landscape`` computed and verified.

    python -m asft.train --aligned ALIGNED_DIR --anchor d_aligned/ --report runs/epl/results.json \\
        --data agnews_1k_p_0.1.json --lambda 1 --out runs/asft

Methods: ``asft`` (L_task + λ‖C⊥ΔW‖², LoRA or full-parameter), ``sft`` (λ = 0), ``safelora`` (plain
LoRA SFT, then Safe LoRA's post-hoc projection), ``alt`` (AsFT_Alt: no base model; harmful directions
estimated from the harmful examples in the data, penalised along). The anchor is d_aligned from
``--anchor`` (a saved direction) or ``--base`` + ``--aligned``; it must come with a passing verification
report (``--report``, the ``results.json`` of ``python -m landscape.epl``) unless ``--allow-unverified-anchor``.
Writes the fine-tuned model (merged, loadable with ``from_pretrained``), the adapter (LoRA), the
anchor's verification and the training log into ``--out``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

METHODS = ("asft", "sft", "safelora", "alt")


@dataclass
class TrainArgs:
    aligned: str = ""
    data: str = ""
    out: str = "runs/asft"
    method: str = "asft"
    anchor: str | None = None
    base: str | None = None
    report: str | None = None
    allow_unverified_anchor: bool = False
    n: int | None = None
    p: float | None = None
    lambda_reg: float = 1.0
    form: str = "reference"
    mode: str = "lora"
    k: int = 8
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    include_lora_scale: bool = False
    epochs: float = 10.0
    lr: float = 5e-5
    batch_size: int = 8
    max_steps: int = -1
    seed: int = 0
    safelora_threshold: float = 0.5
    anchor_min_ratio: float = 3.0
    device: str = "cpu"


@dataclass
class TrainResult:
    out: Path
    model_dir: Path
    verification: dict | None
    log: list[dict]
    seconds: float
    n_train: int
    n_harmful: int
    safelora: dict | None = None


def _validate(a: TrainArgs) -> None:
    from .regularizer import FORMS

    if a.method not in METHODS:
        raise ValueError(f"Unknown method {a.method!r}. Available: {', '.join(METHODS)}")
    if a.lambda_reg < 0:
        raise ValueError(f"lambda must be >= 0, got {a.lambda_reg}")
    if a.form not in FORMS:
        raise ValueError(f"Unknown regulariser form {a.form!r}. Available: {', '.join(FORMS)}")
    if a.p is not None and not 0 <= a.p <= 1:
        raise ValueError(f"poison fraction p must be in [0, 1], got {a.p}")
    if not a.aligned or not a.data:
        raise ValueError("--aligned (the model to fine-tune) and --data are required")
    if a.method in ("asft", "safelora") and a.anchor is None and a.base is None:
        raise ValueError(f"method {a.method!r} needs an anchor: --anchor DIR or --base (with --aligned)")


def run(a: TrainArgs) -> TrainResult:
    """Validate everything, then train; nothing is written before the checks pass."""
    import logging

    from landscape.io import atomic_write_json
    from landscape.loading import load_model

    from .anchor import load_anchor, verify
    from .config import AsftConfig
    from .data import SFTDataset, collate, is_harmful, load_sft_records, mix
    from .trainer import AsftTrainer, prepare_model

    _validate(a)
    t0 = time.perf_counter()
    records = load_sft_records(a.data)
    if a.n is not None or a.p is not None:
        task = [r for r in records if not is_harmful(r)]
        harm = [r for r in records if is_harmful(r)]
        n = a.n if a.n is not None else len(task)
        p = a.p if a.p is not None else len(harm) / max(1, len(task))
        records = mix(task, harm, n, p, seed=a.seed)
    n_harm = sum(is_harmful(r) for r in records)
    model, tok = load_model(a.aligned, dtype="float32", device=a.device)

    if a.method == "alt":
        from .alt import harmful_anchor
        from .data import is_harmful as _h

        anchor = harmful_anchor(model, tok, [r for r in records if _h(r)], a.target_modules, k=a.k)
        form, lam = "aligned", a.lambda_reg
    else:
        anchor = load_anchor(
            a.anchor,
            base=a.base,
            aligned=a.aligned if a.anchor is None else None,
            target_modules=a.target_modules,
            k=a.k,
        )
        if a.method == "asft":
            verify(anchor, a.report, allow_unverified=a.allow_unverified_anchor, min_ratio=a.anchor_min_ratio)
        form, lam = a.form, (a.lambda_reg if a.method == "asft" else 0.0)
    cfg = AsftConfig(
        output_dir=str(Path(a.out) / "trainer"),
        lambda_reg=lam,
        form=form,
        mode=a.mode,
        k=a.k,
        target_modules=list(a.target_modules),
        lora_r=a.lora_r,
        lora_alpha=a.lora_alpha,
        lora_dropout=a.lora_dropout,
        include_lora_scale=a.include_lora_scale,
        num_train_epochs=a.epochs,
        learning_rate=a.lr,
        per_device_train_batch_size=a.batch_size,
        max_steps=a.max_steps,
        seed=a.seed,
        data_seed=a.seed,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        disable_tqdm=False,
        use_cpu=a.device == "cpu",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
        weight_decay=0.0,
    )
    model = prepare_model(model, cfg, anchor)
    ds = SFTDataset(tok, records)
    logging.getLogger("transformers.trainer").setLevel(logging.WARNING)
    trainer = AsftTrainer(
        model=model, args=cfg, train_dataset=ds, data_collator=collate(tok.pad_token_id), anchor=anchor
    )
    trainer.train()
    safelora = None
    if a.method == "safelora":
        from .safe_lora import safe_lora_

        rep = safe_lora_(trainer.model, anchor, a.safelora_threshold)
        safelora = {"projected": rep.projected, "similarities": rep.similarities}

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    final = trainer.model
    if a.mode == "lora":
        final.save_pretrained(out / "adapter")
        final = final.merge_and_unload()
    model_dir = out / "model"
    final.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    for f in model_dir.iterdir():
        f.chmod(0o644)
    v = anchor.verification.as_dict() if anchor.verification else None
    if anchor.verification is not None and anchor.verification.report is not None:
        v["report"] = anchor.verification.report
    atomic_write_json(
        out / "anchor_verification.json", {"method": a.method, "verification": v, "anchor_sources": anchor.sources}
    )
    result = TrainResult(
        out, model_dir, v, trainer.state.log_history, time.perf_counter() - t0, len(records), n_harm, safelora
    )
    atomic_write_json(
        out / "train_log.json",
        {
            "args": asdict(a),
            "log": result.log,
            "seconds": result.seconds,
            "n_train": len(records),
            "n_harmful": n_harm,
            "safelora": safelora,
        },
    )
    return result


def main(argv: list[str] | None = None) -> int:
    from .regularizer import FORMS

    d = TrainArgs()
    ap = argparse.ArgumentParser(
        prog="python -m asft.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--aligned", required=True, help="the aligned model to fine-tune")
    ap.add_argument("--data", required=True, help="AsFT JSON fine-tuning data ({instruction, input, output})")
    ap.add_argument("--out", default=d.out)
    ap.add_argument("--method", default=d.method, choices=METHODS)
    ap.add_argument("--anchor", help="saved d_aligned direction (python -m landscape.directions compute ...)")
    ap.add_argument("--base", help="base checkpoint: d_aligned = aligned - base when no --anchor is given")
    ap.add_argument("--report", help="verification report: results.json of python -m landscape.epl")
    ap.add_argument("--allow-unverified-anchor", action="store_true")
    ap.add_argument("--n", type=int, help="re-mix: number of task samples")
    ap.add_argument("--p", type=float, help="re-mix: harmful fraction (floor(p*n) harmful samples)")
    ap.add_argument("--lambda", dest="lambda_reg", type=float, default=d.lambda_reg)
    ap.add_argument("--form", default=d.form, choices=FORMS)
    ap.add_argument("--mode", default=d.mode, choices=["lora", "full"])
    ap.add_argument("--k", type=int, default=d.k)
    ap.add_argument("--target-modules", nargs="+", default=d.target_modules)
    ap.add_argument("--lora-r", type=int, default=d.lora_r)
    ap.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    ap.add_argument("--include-lora-scale", action="store_true")
    ap.add_argument("--epochs", type=float, default=d.epochs)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--max-steps", type=int, default=d.max_steps)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--device", default=d.device)
    ns = vars(ap.parse_args(argv))
    res = run(TrainArgs(**ns))
    losses = [e for e in res.log if "task_loss" in e]
    last = losses[-1] if losses else {}
    print(
        f"trained {res.n_train} examples ({res.n_harmful} harmful) in {res.seconds:.1f} s; last task loss "
        f"{last.get('task_loss', float('nan')):.4f}, regulariser {last.get('asft_reg', float('nan')):.4g}"
    )
    print(f"model: {res.model_dir}")
    return 0


if __name__ == "__main__":
    from landscape.cli import guarded

    raise SystemExit(guarded(main))
