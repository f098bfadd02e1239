"""``python -m asft.evaluate``: Harmful Score and Fine-tune Accuracy of one model (the library is asft.scoring).

    python -m asft.evaluate --model runs/asft/model --harmful-prompts harmful_eval.json --task-test task_test.json

- Harmful Score (HS): % of held-out malicious instructions whose answer a judge flags (any ``landscape``
  judge: keyword, guard or classifier from a local path, or the organism's oracle);
- Fine-tune Accuracy (FA): % of labelled task items whose answer names the right label (AG News style:
  the first label name the answer starts with, else the first it contains).

Both come with Wilson 95 % intervals. Answers are generated in batches by ``landscape``'s HF backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from landscape.session import DeviceArgs, JudgeArgs

from .data import load_task_test
from .scoring import EvalResult, evaluate_model, load_trained


@dataclass(kw_only=True)
class EvaluateArgs(DeviceArgs, JudgeArgs):
    """Arguments of ``python -m asft.evaluate``."""

    model: str = field(metadata={"help": "model directory, or a PEFT adapter directory"})
    harmful_prompts: str = field(metadata={"help": "malicious instructions (JSON, CSV, JSONL or text)"})
    base: str | None = field(default=None, metadata={"help": "base model of an adapter (default: the one it records)"})
    task_test: str | None = field(
        default=None, metadata={"help": "labelled task set ({instruction, input, label}) for FA"}
    )
    limit: int | None = field(default=None, metadata={"help": "use the first N harmful prompts"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per answer"})
    dtype: str = field(
        default="auto", metadata={"help": "model dtype: float32, bf16, fp16 or auto (the checkpoint's)"}
    )
    out: str | None = field(default=None, metadata={"help": "write the result as JSON here"})
    plan: bool = field(
        default=False,
        metadata={"help": "print the memory plan (the weights and generation; a bare config.json is enough) and exit"},
    )

    def __post_init__(self) -> None:
        self.check_device_args()
        self.check_judge_args(organism=False)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")


def run(args: EvaluateArgs) -> EvalResult:
    """Harmful Score (and Fine-tune Accuracy with ``task_test``) of one model; writes ``out`` when given."""
    if args.plan:
        return plan(args)
    from landscape.data import load_prompts
    from landscape.loading import check_device
    from landscape.session import build_judge, resolve_device

    device = resolve_device(args.device)
    check_device(device)
    prompts = load_prompts(args.harmful_prompts, limit=args.limit)
    task = load_task_test(args.task_test) if args.task_test else None
    judge = build_judge(args.judge, args.judge_path, device, model=args.model)
    model, tok = load_trained(args.model, args.base, device, args.dtype)
    res = evaluate_model(model, tok, prompts, task, judge, args.max_new_tokens)
    if args.out:
        from landscape.io import atomic_write_json

        atomic_write_json(args.out, asdict(res))
    return res


def plan(args: EvaluateArgs):
    """``--plan``: what evaluating holds (no perturbation: the weights and generation), nothing loaded or run."""
    from types import SimpleNamespace

    from landscape.session import memory_plan

    target = Path(args.model)
    if not (target / "config.json").is_file() and target.suffix != ".json" and not list(target.glob("*.gguf")):
        if args.base is None:
            raise ValueError(f"--plan: {target} holds no config.json (an adapter?): give --base")
        target = Path(args.base)
    ns = SimpleNamespace(
        aligned=str(target), dtype=args.dtype, device=args.device, placement="auto", max_new_tokens=args.max_new_tokens
    )
    return memory_plan(ns, [[]], "evaluation (no perturbation: only the weights and generation)", args.limit or 80)


def _print(res) -> None:
    from landscape.session import PlanReport

    if isinstance(res, PlanReport):
        print("\n".join(res.lines()))
        return
    print(
        f"Harmful Score {res.harmful_score:.1f}% [{res.harmful_ci[0]:.1f}, {res.harmful_ci[1]:.1f}] "
        f"on {res.n_harmful} prompts ({res.judge.split(':')[0]} judge)"
    )
    if res.accuracy is not None:
        print(
            f"Fine-tune Accuracy {res.accuracy:.1f}% [{res.accuracy_ci[0]:.1f}, {res.accuracy_ci[1]:.1f}] "
            f"on {res.n_task} items"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m asft.evaluate`` and the ``asft-evaluate`` console script."""
    from landscape.cli import command

    return command([EvaluateArgs], run, "python -m asft.evaluate", __doc__, report=_print)(argv)


if __name__ == "__main__":
    raise SystemExit(main())
