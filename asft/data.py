"""AsFT's data formats and the poisoned fine-tuning mix.

- fine-tuning data: a JSON list of ``{instruction, input, output}``; harmful items have an empty or
  missing ``input``;
- harmful evaluation prompts: a JSON list of ``{instruction}`` (or anything :func:`landscape.data.load_prompts`
  reads);
- task test sets: a JSON list of ``{instruction, input, label}`` with integer labels (AG News order
  World, Sports, Business, Sci/Tech).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from landscape.data import INSTRUCTION_TEMPLATE

AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
DEFAULT_TEMPLATE = INSTRUCTION_TEMPLATE


@dataclass(frozen=True)
class SFTRecord:
    """One fine-tuning example."""

    instruction: str
    input: str
    output: str

    def prompt(self, template: str = DEFAULT_TEMPLATE) -> str:
        """The user message: ``template`` filled in, or the instruction alone when there is no input."""
        if not self.input:
            return self.instruction
        return template.format(instruction=self.instruction, input=self.input)


def _read_json_list(path: str | Path) -> list:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Data file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}, line {e.lineno}: malformed JSON ({e.msg})") from e
    if not isinstance(data, list) or not data:
        raise ValueError(f"{p}: expected a non-empty JSON list of records")
    return data


def _field(rec, i: int, name: str, path, required: bool = True, kind=str):
    if not isinstance(rec, dict):
        raise ValueError(f"{path}, record {i}: expected an object, got {type(rec).__name__}")
    if name not in rec or rec[name] is None:
        if required:
            raise ValueError(f"{path}, record {i}: missing field {name!r} (has {sorted(rec)})")
        return kind()
    if not isinstance(rec[name], kind) or (kind is int and isinstance(rec[name], bool)):  # JSON true is no label
        raise ValueError(f"{path}, record {i}: field {name!r} must be {kind.__name__}, got {type(rec[name]).__name__}")
    return rec[name]


def load_sft_records(path: str | Path) -> list[SFTRecord]:
    """Read AsFT fine-tuning JSON; errors name the record index and the missing field."""
    data = _read_json_list(path)
    out = []
    for i, rec in enumerate(data):
        instruction = _field(rec, i, "instruction", path)
        if not instruction.strip():
            raise ValueError(f"{path}, record {i}: empty 'instruction'")
        out.append(
            SFTRecord(instruction, _field(rec, i, "input", path, required=False), _field(rec, i, "output", path))
        )
    return out


@dataclass(frozen=True)
class TaskRecord:
    instruction: str
    input: str
    label: int


def load_task_test(path: str | Path, labels: Sequence[str] | None = None) -> list[TaskRecord]:
    """Read a labelled task test set (``{instruction, input, label}``, integer labels indexing ``labels``, AG News's
    four by default); a label outside them (or a boolean, which JSON's ``true`` would make 1) is an error."""
    labels = list(AGNEWS_LABELS if labels is None else labels)
    data = _read_json_list(path)
    out = []
    for i, r in enumerate(data):
        rec = TaskRecord(
            _field(r, i, "instruction", path),
            _field(r, i, "input", path, required=False),
            _field(r, i, "label", path, kind=int),
        )
        if not 0 <= rec.label < len(labels):
            raise ValueError(
                f"{path}, record {i}: label {rec.label} is outside the task's labels 0..{len(labels) - 1} "
                f"({', '.join(labels)})"
            )
        out.append(rec)
    return out


def is_harmful(rec: SFTRecord) -> bool:
    """AsFT marks harmful items by an empty input (instruction-only BeaverTails prompts)."""
    return not rec.input.strip()


def mix(task: list[SFTRecord], harmful: list[SFTRecord], n: int, p: float, seed: int = 0) -> list[SFTRecord]:
    """``n`` task samples plus exactly ⌊p·n⌋ harmful samples, shuffled with ``seed``.

    Follows AsFT's data recipe (n = 1000 task samples, p = 0.1 gives 100 harmful ones on top).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"poison fraction p must be in [0, 1], got {p}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    k = math.floor(p * n)
    if n > len(task):
        raise ValueError(f"asked for n={n} task samples, only {len(task)} available")
    if k > len(harmful):
        raise ValueError(f"asked for {k} harmful samples (p={p}, n={n}), only {len(harmful)} available")
    rng = random.Random(seed)
    out = rng.sample(task, n) + rng.sample(harmful, k)
    rng.shuffle(out)
    return out


def encode_record(tokenizer, rec: SFTRecord, template: str = DEFAULT_TEMPLATE, max_length: int = 512) -> dict:
    """Token ids of prompt + answer (a finished turn, with EOS) with labels only on the answer; rendered by
    :func:`landscape.text.encode_chat`, the function generation uses, so training and evaluation agree."""
    from landscape.text import encode_chat, training_labels

    enc = encode_chat(tokenizer, rec.prompt(template), rec.output)
    return {"input_ids": enc.ids[:max_length], "labels": training_labels(enc)[:max_length]}


class SFTDataset:
    """A list of tokenised records (a map-style dataset for the Hugging Face Trainer)."""

    def __init__(self, tokenizer, records: list[SFTRecord], template: str = DEFAULT_TEMPLATE, max_length: int = 512):
        self.items = [encode_record(tokenizer, r, template, max_length) for r in records]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate(pad_id: int):
    """Right-padding collator (see :func:`landscape.text.right_pad`)."""
    from landscape.text import right_pad

    def fn(batch: list[dict]) -> dict:
        ids, mask, labels = right_pad([b["input_ids"] for b in batch], pad_id, [b["labels"] for b in batch])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return fn
