"""Harmful Score and Fine-tune Accuracy of a fine-tuned model (AsFT's two metrics).

- Harmful Score (HS): % of held-out malicious instructions whose answer a judge flags (any ``landscape``
  judge: keyword, guard or classifier from a local path, or the organism's oracle);
- Fine-tune Accuracy (FA): % of labelled task items whose answer names the right label (AG News style:
  the first label name the answer starts with, else the first it contains).

Both come with Wilson 95 % intervals. Answers are generated in batches by ``landscape``'s HF backend.
``python -m asft.evaluate`` is these functions behind a command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from landscape.metrics import label_of

from .data import AGNEWS_LABELS, DEFAULT_TEMPLATE, SFTRecord, TaskRecord

__all__ = ["label_of"]  # re-exported: callers import it from here


@dataclass
class EvalResult:
    harmful_score: float
    harmful_ci: tuple[float, float]
    accuracy: float | None
    accuracy_ci: tuple[float, float] | None
    n_harmful: int
    n_task: int
    judge: str


def harmful_score(
    model, tokenizer, prompts: list[str], judge, max_new_tokens: int = 32, batch_size: int | None = None
) -> tuple[float, tuple[float, float], list[str]]:
    from landscape.backend import generate
    from landscape.generation import GenerationSettings
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
    from landscape.backend import generate
    from landscape.generation import GenerationSettings
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
        try:
            model = PeftModel.from_pretrained(model, p).merge_and_unload().eval()
        except RuntimeError as e:
            if "size mismatch" not in str(e):
                raise
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln and "copying" in ln), "")
            raise ValueError(
                f"adapter {p} does not fit base {base}: it was trained on a model of other shapes ({first[:200]})"
            ) from None
        tok_dir = p if any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")) else base
        return model, load_tokenizer(tok_dir)
    return load_model(p, dtype=dtype, device=device)


def ci95(x) -> tuple[float, float]:
    """95 % t-interval of the mean of ``x`` (over seeds)."""
    from landscape.metrics import mean_ci

    return mean_ci(x)[1:]


def hs_at_fa(points: list[tuple[float, float]], fa: float) -> float | None:
    """HS at a given FA along one sweep (linear between the sweep's points sorted by FA; None outside)."""
    pts = sorted(points)
    for (f0, h0), (f1, h1) in zip(pts, pts[1:], strict=False):
        if f0 <= fa <= f1:
            return h0 if f1 == f0 else h0 + (fa - f0) * (h1 - h0) / (f1 - f0)
    return None
