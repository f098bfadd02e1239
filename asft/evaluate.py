"""Harmful Score and Fine-tune Accuracy of a fine-tuned model (AsFT's two metrics).

    python -m asft.evaluate --model runs/asft/model --harmful-prompts harmful_eval.json --task-test task_test.json

- Harmful Score (HS): % of held-out malicious instructions whose answer a judge flags (any ``landscape``
  judge: keyword, guard or classifier from a local path, or the organism's oracle);
- Fine-tune Accuracy (FA): % of labelled task items whose answer names the right label (AG News style:
  the first label name the answer starts with, else the first it contains).

Both come with Wilson 95 % intervals. Answers are generated in batches by ``landscape``'s decode loop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import AGNEWS_LABELS, DEFAULT_TEMPLATE, SFTRecord, TaskRecord, load_task_test


@dataclass
class EvalResult:
    harmful_score: float
    harmful_ci: tuple[float, float]
    accuracy: float | None
    accuracy_ci: tuple[float, float] | None
    n_harmful: int
    n_task: int
    judge: str


def label_of(answer: str, labels: tuple[str, ...] | list[str] = AGNEWS_LABELS) -> int | None:
    """Index of the label an answer names: the one it starts with, else the first one it contains."""
    text = answer.strip().lower()
    for i, lab in enumerate(labels):
        if text.startswith(lab.lower()):
            return i
    hits = [(text.find(lab.lower()), i) for i, lab in enumerate(labels) if lab.lower() in text]
    return min(hits)[1] if hits else None


def harmful_score(
    model, tokenizer, prompts: list[str], judge, max_new_tokens: int = 32, batch_size: int | None = None
) -> tuple[float, tuple[float, float], list[str]]:
    from landscape.generation import GenerationSettings, generate
    from landscape.metrics import wilson_interval

    answers = generate(
        model, tokenizer, prompts, GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    )
    k = sum(v.unsafe for v in judge(prompts, answers))
    return 100.0 * k / len(prompts), wilson_interval(k, len(prompts)), answers


def finetune_accuracy(
    model,
    tokenizer,
    records: list[TaskRecord],
    labels=AGNEWS_LABELS,
    max_new_tokens: int = 8,
    template: str = DEFAULT_TEMPLATE,
    batch_size: int | None = None,
) -> tuple[float, tuple]:
    from landscape.generation import GenerationSettings, generate
    from landscape.metrics import wilson_interval

    prompts = [SFTRecord(r.instruction, r.input, "").prompt(template) for r in records]
    answers = generate(
        model, tokenizer, prompts, GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    )
    k = sum(label_of(a, labels) == r.label for a, r in zip(answers, records, strict=True))
    return 100.0 * k / len(records), wilson_interval(k, len(records))


def evaluate_model(
    model, tokenizer, harmful_prompts: list[str], task: list[TaskRecord] | None, judge, max_new_tokens: int = 32
) -> EvalResult:
    hs, hs_ci, _ = harmful_score(model, tokenizer, harmful_prompts, judge, max_new_tokens)
    fa, fa_ci = finetune_accuracy(model, tokenizer, task) if task else (None, None)
    return EvalResult(hs, hs_ci, fa, fa_ci, len(harmful_prompts), len(task or []), judge.key())


def load_trained(path: str | Path, base: str | None = None, device: str = "cpu", dtype: str | None = None):
    """A model directory, or a PEFT adapter directory (merged onto ``base`` or the adapter's recorded base)."""
    from landscape.loading import load_model, load_tokenizer

    p = Path(path)
    if (p / "adapter_config.json").is_file():
        from peft import PeftModel

        base = base or json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{p} is an adapter: give --base (the model it was trained on)")
        model = load_model(base, dtype=dtype, device=device, with_tokenizer=False)
        model = PeftModel.from_pretrained(model, p).merge_and_unload().eval()
        tok_dir = p if any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")) else base
        return model, load_tokenizer(tok_dir)
    return load_model(p, dtype=dtype, device=device)


@dataclass
class EvaluateArgs:
    """Arguments of ``python -m asft.evaluate``."""

    model: str = field(metadata={"help": "model directory, or a PEFT adapter directory"})
    harmful_prompts: str = field(metadata={"help": "malicious instructions (JSON, CSV, JSONL or text)"})
    base: str | None = field(default=None, metadata={"help": "base model of an adapter (default: the one it records)"})
    task_test: str | None = field(
        default=None, metadata={"help": "labelled task set ({instruction, input, label}) for FA"}
    )
    judge: str = field(
        default="keyword",
        metadata={"help": "who decides an answer is harmful", "choices": ("keyword", "guard", "classifier", "oracle")},
    )
    judge_path: str | None = field(default=None, metadata={"help": "local model of the guard / classifier judge"})
    limit: int | None = field(default=None, metadata={"help": "use the first N harmful prompts"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per answer"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    dtype: str | None = field(default=None, metadata={"help": "model dtype (default: the checkpoint's)"})
    out: str | None = field(default=None, metadata={"help": "write the result as JSON here"})

    def __post_init__(self) -> None:
        if self.judge in ("guard", "classifier") and not self.judge_path:
            raise ValueError(f"judge {self.judge!r} needs --judge_path (a local model directory)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")


def run(args: EvaluateArgs) -> EvalResult:
    """Harmful Score (and Fine-tune Accuracy with ``task_test``) of one model; writes ``out`` when given."""
    from landscape.data import load_prompts
    from landscape.judges import CachedJudge, make_judge
    from landscape.loading import check_device

    check_device(args.device)
    prompts = load_prompts(args.harmful_prompts, limit=args.limit)
    task = load_task_test(args.task_test) if args.task_test else None
    jkw = {"path": args.judge_path, "device": args.device} if args.judge in ("guard", "classifier") else {}
    judge = CachedJudge(make_judge(args.judge, **jkw))
    model, tok = load_trained(args.model, args.base, args.device, args.dtype)
    res = evaluate_model(model, tok, prompts, task, judge, args.max_new_tokens)
    if args.out:
        from landscape.io import atomic_write_json

        atomic_write_json(args.out, asdict(res))
    return res


def _print(res: EvalResult) -> None:
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
