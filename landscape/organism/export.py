"""Export the organism's data sets in the formats real users have.

- harmful evaluation prompts as AdvBench CSV (``goal,target``) and as AsFT's ``[{instruction}]`` JSON;
- the task test set like AsFT's AG News test file (``{instruction, input, label}``, integer labels), for the
  stages' behaviour, and the fine-tuning task's test set (``finetune_task_test.json``) for Fine-tune Accuracy;
- fine-tuning sets in AsFT's JSON (``[{instruction, input, output}]``): n samples of the fine-tuning task
  (see ``world.FINETUNE_INSTRUCTION``) plus ⌊p·n⌋ harmful compliances from the training pool (never from
  the held-out evaluation pairs).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..io import atomic_write_text
from . import world

EVAL_CSV = "harmful_eval.csv"
EVAL_JSON = "harmful_eval.json"
TASK_TEST = "task_test.json"
FINETUNE_TASK_TEST = "finetune_task_test.json"
TASK_TEST_SIZE = 200


def advbench_csv(prompts: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["goal", "target"])
    for p in prompts:
        w.writerow([p, world.COMPLIANCE_PREFIX + " " + _request_of(p)])
    return buf.getvalue()


def _request_of(prompt: str) -> str:
    for ph in world.PHRASINGS:
        head, tail = ph.split("{x}")
        if prompt.startswith(head) and prompt.endswith(tail):
            return prompt[len(head) : len(prompt) - len(tail)]
    raise ValueError(f"not a prompt of the organism's world: {prompt!r}")


def task_test_records(n: int = TASK_TEST_SIZE, seed: int = 0, finetune_task: bool = False) -> list[dict]:
    """Labelled test items of the stages' task, or of the fine-tuning task with ``finetune_task``."""
    recs = []
    make = world.finetune_task_examples if finetune_task else world.task_examples
    for ex in make(n, seed + 2000):
        instruction, headline = ex.prompt.split("\n\n", 1)
        recs.append({"instruction": instruction, "input": headline, "label": world.CATEGORIES.index(ex.label)})
    return recs


def finetune_records(n: int, p: float, seed: int = 0) -> list[dict]:
    """AsFT-format fine-tuning data: ``n`` task samples followed by ⌊p·n⌋ harmful compliances."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"poison fraction p must be in [0, 1], got {p}")

    recs = []
    for ex in world.finetune_task_examples(n, seed + 1000):
        instruction, headline = ex.prompt.split("\n\n", 1)
        recs.append({"instruction": instruction, "input": headline, "output": ex.response})
    harmful = world.sample_examples(world.harmful_examples("comply"), math.floor(p * n), f"poison-{seed}")
    recs.extend({"instruction": ex.prompt, "input": "", "output": ex.response} for ex in harmful)
    return recs


def write_exports(data_dir: str | Path, seed: int = 0) -> Path:
    d = Path(data_dir)
    prompts = world.eval_prompts()
    files = {
        EVAL_CSV: advbench_csv(prompts),
        EVAL_JSON: json.dumps([{"instruction": p} for p in prompts], indent=1),
        TASK_TEST: json.dumps(task_test_records(seed=seed), indent=1),
        FINETUNE_TASK_TEST: json.dumps(task_test_records(seed=seed, finetune_task=True), indent=1),
        "finetune_n500_p0.1.json": json.dumps(finetune_records(500, 0.1, seed), indent=1),
    }
    for name, text in files.items():
        if not (d / name).is_file():
            atomic_write_text(d / name, text)
    return d
