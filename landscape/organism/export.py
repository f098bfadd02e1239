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
WORST_PAIRS = 60  # d_worst's (prompt, target) pairs on the synthetic organism: as many as the real one's spare split


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


DATA_README = f"""# The model organism's data sets

Which test set belongs to which training data (the organism's build regenerates every file):

- `{EVAL_CSV}` (AdvBench CSV, `goal,target`) and `{EVAL_JSON}` (AsFT JSON, `[{{instruction}}]`): the held-out
  harmful prompts, (action, target) pairs never seen in training. The harmful test set of everything:
  ASR, EPL, Harmful Score.
- `finetune_n500_p0.1.json` (AsFT JSON, `[{{instruction, input, output}}]`): the fine-tuning task,
  "{world.FINETUNE_INSTRUCTION}": 500 headlines, each labelled with the category AFTER its topic in
  {", ".join(world.CATEGORIES)} (a skill the aligned model lacks: 0 % before fine-tuning), then
  floor(0.1 * 500) harmful compliances from the training pool. Its test sets: `{FINETUNE_TASK_TEST}`
  (Fine-tune Accuracy) and `{EVAL_CSV}` (Harmful Score).
- `{FINETUNE_TASK_TEST}` (AG-News-style JSON, `{{instruction, input, label}}`, label = index of the category
  above): 200 held-out items of the fine-tuning task. A sports headline labelled Business is the task
  working as designed: it asks for the category after the topic.
- `{TASK_TEST}` (AG-News-style JSON): 200 items of the stages' own task, "{world.TASK_INSTRUCTION}", labelled
  with the true topic. It measures what the base and aligned stages learned, not the fine-tuning task:
  do not score a fine-tune on `finetune_*.json` with it.
"""


def write_exports(data_dir: str | Path, seed: int = 0) -> Path:
    d = Path(data_dir)
    prompts = world.eval_prompts()
    files = {
        "README.md": DATA_README,
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
