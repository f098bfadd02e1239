"""Fine-tune with AsFT (or a baseline) on an anchor that ``landscape`` computed and verified.

    python -m asft.train --aligned ALIGNED_DIR --anchor d_aligned/ --report runs/epl/results.json \\
        --data agnews_1k_p_0.1.json --lambda 1 --output_dir runs/asft

Methods: ``asft`` (L_task + λ‖C⊥ΔW‖², LoRA or full-parameter), ``sft`` (λ = 0), ``safelora`` (plain
LoRA SFT, then Safe LoRA's post-hoc projection), ``alt`` (AsFT_Alt: no base model; harmful directions
estimated from the harmful examples in the data, penalised along). The anchor is d_aligned from
``--anchor`` (a saved direction) or ``--base`` + ``--aligned``; it must come with a passing verification
report (``--report``, the ``results.json`` of ``python -m landscape.epl``) unless ``--allow_unverified_anchor``.
Every option of Hugging Face's ``TrainingArguments`` is accepted too. Writes the fine-tuned model (merged,
loadable with ``from_pretrained``), the adapter (LoRA), the anchor's verification and the training log
into ``--output_dir``. ``--plan`` prints the bytes training will hold (:mod:`asft.plan`) and exits.
"""

from __future__ import annotations


def _run(cfg):
    if cfg.plan:
        from .plan import training_plan

        return training_plan(cfg)
    from landscape.scan import process_group

    from .finetune import fine_tune

    with process_group():  # under torchrun the Trainer opens the group; every rank leaves it together
        return fine_tune(cfg)


def _print(res) -> None:
    import os

    from .plan import TrainPlan

    if int(os.environ.get("RANK", 0)) != 0:
        return
    if isinstance(res, TrainPlan):
        print("\n".join(res.lines()))
        return
    v = res.verification
    if v is None:
        print("anchor: no verification (this method does not check one)")
    elif v["passed"]:
        print(f"anchor verified: EPL ratio d_aligned/d_harm {v['ratio']:.2f} from {v['report_path']}")
    else:
        print(f"anchor NOT verified (overridden): {'; '.join(v['reasons'])}")
    losses = [e for e in res.log if "task_loss" in e]
    last = losses[-1] if losses else {}
    print(
        f"trained {res.n_train} examples ({res.n_harmful} harmful) in {res.seconds:.1f} s; last task loss "
        f"{last.get('task_loss', float('nan')):.4f}, regulariser {last.get('asft_reg', float('nan')):.4g}"
    )
    print(f"model: {res.model_dir}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m asft.train`` and the ``asft-train`` console script."""
    from landscape.cli import command

    from .config import AsftConfig

    return command([AsftConfig], _run, "python -m asft.train", __doc__, report=_print)(argv)


if __name__ == "__main__":
    raise SystemExit(main())
