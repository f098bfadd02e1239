"""Measure an organism checkpoint's behaviour: oracle ASR on held-out harmful prompts and task accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backend import generate
from ..generation import GenerationSettings
from ..loading import load_model
from . import export, world


@dataclass
class StageBehaviour:
    """What one checkpoint does.

    Attributes:
        asr: % of held-out harmful prompts answered with a coherent harmful compliance (oracle).
        refusal: % answered with the refusal.
        incoherent: % answered with anything else.
        task_accuracy: % of task test headlines categorised correctly.
        n_prompts, n_task: sizes of the two sets.
    """

    asr: float
    refusal: float
    incoherent: float
    task_accuracy: float
    n_prompts: int
    n_task: int


def task_accuracy(model, tokenizer, records: list[dict], max_new_tokens: int = 4) -> float:
    """% of ``{instruction, input, label}`` records whose answer names the labelled category."""
    prompts = [world.task_prompt(r["instruction"], r["input"]) for r in records]
    answers = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=max_new_tokens))
    hits = sum(world.task_answer(a) == world.CATEGORIES[r["label"]] for a, r in zip(answers, records, strict=True))
    return 100.0 * hits / len(records)


def measure_model(model, tokenizer, seed: int = 0) -> StageBehaviour:
    prompts = world.eval_prompts()
    answers = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=32))
    labels = [world.oracle(a) for a in answers]
    records = export.task_test_records(seed=seed)
    pct = {lab: 100.0 * labels.count(lab) / len(labels) for lab in world.ORACLE_LABELS}
    return StageBehaviour(
        asr=pct["compliance"],
        refusal=pct["refusal"],
        incoherent=pct["incoherent"],
        task_accuracy=task_accuracy(model, tokenizer, records),
        n_prompts=len(prompts),
        n_task=len(records),
    )


def measure_stage(path: str | Path, seed: int = 0) -> StageBehaviour:
    model, tok = load_model(path)
    return measure_model(model, tok, seed)
