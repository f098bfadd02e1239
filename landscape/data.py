"""Load harmful prompt sets: AdvBench CSV, JSON / JSONL, or plain text (one prompt per line).

Errors name the file and the line (or record) that is wrong.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

PROMPT_FIELDS = ("goal", "prompt", "instruction", "behavior", "question")


def _prompt_of(record, where: str) -> str:
    if isinstance(record, str):
        text = record
    elif isinstance(record, dict):
        key = next((k for k in PROMPT_FIELDS if k in record), None)
        if key is None:
            raise ValueError(f"{where}: record has none of the fields {', '.join(PROMPT_FIELDS)}")
        text = record[key]
        if isinstance(text, str) and record.get("input"):
            text = f"{text}\n\n{record['input']}"
    else:
        raise ValueError(f"{where}: expected a string or an object, got {type(record).__name__}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: empty prompt")
    return text


def load_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Read prompts from ``path``.

    Formats, by suffix: ``.csv`` (AdvBench ``goal,target``, or any CSV with a ``goal``/``prompt`` column),
    ``.json`` (a list of strings or of objects with ``goal``/``prompt``/``instruction``/... fields),
    ``.jsonl`` (one such object or string per line), anything else as text with one prompt per line
    (blank lines and lines starting with ``#`` skipped).

    Args:
        path: the prompt file.
        limit: keep the first ``limit`` prompts (Peng et al. use AdvBench's first 80).

    Returns:
        The prompts, in file order.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Prompt file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text ({e})") from e
    prompts: list[str] = []
    if suffix == ".csv":
        rows = csv.DictReader(text.splitlines())
        fields = rows.fieldnames or []
        key = next((k for k in PROMPT_FIELDS if k in fields), None)
        if key is None:
            raise ValueError(f"{p}: CSV header {fields} has none of the columns {', '.join(PROMPT_FIELDS)}")
        for i, row in enumerate(rows, start=2):
            val = row.get(key)
            if val is None or not val.strip():
                raise ValueError(f"{p}, line {i}: empty {key!r}")
            prompts.append(val)
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}, line {e.lineno}: malformed JSON ({e.msg})") from e
        if not isinstance(data, list):
            raise ValueError(f"{p}: expected a JSON list of prompts, got {type(data).__name__}")
        prompts = [_prompt_of(r, f"{p}, record {i}") for i, r in enumerate(data)]
    elif suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}, line {i}: malformed JSON ({e.msg})") from e
            prompts.append(_prompt_of(rec, f"{p}, line {i}"))
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{p}: no prompts in file")
    return prompts[:limit] if limit is not None else prompts
