"""Load harmful prompt sets: AdvBench CSV, JSON / JSONL, or plain text (one prompt per line).

Errors name the file and the line (or record) that is wrong.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

INSTRUCTION_TEMPLATE = "{instruction}\n\n{input}"  # an instruction with an input, as AsFT's data joins them
PROMPT_FIELDS = ("goal", "prompt", "instruction", "behavior", "question")
TARGET_FIELDS = ("target", "output", "response", "answer")  # a (prompt, target) pair's answer: load_pairs


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


def _read_csv(fh, p: Path, targets: bool = False) -> list:
    """The prompts of a CSV file; with ``targets``, (prompt, target) pairs from a target column too."""
    reader = csv.reader(fh, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{p}: empty CSV file")
        cols = []
        for fields in (PROMPT_FIELDS, TARGET_FIELDS) if targets else (PROMPT_FIELDS,):
            key = next((k for k in fields if k in header), None)
            if key is None:
                raise ValueError(f"{p}: CSV header {header} has none of the columns {', '.join(fields)}")
            cols.append((key, header.index(key)))
        out = []
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise ValueError(f"{p}, line {reader.line_num}: {len(row)} fields, the header has {len(header)}")
            for key, col in cols:
                if not row[col].strip():
                    raise ValueError(f"{p}, line {reader.line_num}: empty {key!r}")
            out.append(tuple(row[c] for _, c in cols) if targets else row[cols[0][1]])
        return out
    except csv.Error as e:
        raise ValueError(f"{p}, line {reader.line_num}: malformed CSV ({e})") from None


def _read_lines(fh, p: Path, as_json: bool, of=None) -> list:
    """One record per line; lines end only at \\n, \\r\\n or \\r (U+2028 and friends stay inside a prompt).
    JSON lines are read by ``of(record, where)`` (default: a prompt)."""
    of = of or _prompt_of
    out = []
    for i, raw in enumerate(fh, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or (not as_json and line.lstrip().startswith("#")):
            continue
        if not as_json:
            out.append(line.strip())
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}, line {i}: malformed JSON ({e.msg})") from None
        out.append(of(rec, f"{p}, line {i}"))
    return out


def _read_file(path, limit, what: str, listed: str, empty: str, of=None) -> list:
    """The records of a prompt file (``of`` None) or a pair file (``of`` reads one pair): the checks and formats
    both share; ``what``, ``listed`` and ``empty`` word the errors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {str(p)!r} does not exist")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    suffix = p.suffix.lower()
    try:
        with open(p, encoding="utf-8-sig", newline="") as fh:
            if suffix == ".csv":
                out = _read_csv(fh, p, targets=of is not None)
            elif suffix == ".json":
                try:
                    data = json.load(fh)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}, line {e.lineno}: malformed JSON ({e.msg})") from None
                if not isinstance(data, list):
                    raise ValueError(f"{p}: expected a JSON list of {listed}, got {type(data).__name__}")
                out = [(of or _prompt_of)(r, f"{p}, record {i}") for i, r in enumerate(data)]
            elif suffix == ".jsonl" or of is None:
                out = _read_lines(fh, p, as_json=suffix == ".jsonl", of=of)
            else:
                raise ValueError(f"{p}: (prompt, target) pairs are read from .csv, .json or .jsonl, not {suffix!r}")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text ({e})") from None
    if not out:
        raise ValueError(f"{p}: no {empty} in file")
    return out[:limit] if limit is not None else out


def load_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Read prompts from ``path``.

    Formats, by suffix: ``.csv`` (AdvBench ``goal,target``, or any CSV with a ``goal``/``prompt`` column),
    ``.json`` (a list of strings or of objects with ``goal``/``prompt``/``instruction``/... fields),
    ``.jsonl`` (one such object or string per line), anything else as text with one prompt per line
    (blank lines and lines starting with ``#`` skipped). Files are parsed by the csv and json modules on the
    file itself: a UTF-8 BOM is dropped, quoted newlines and Unicode line separators stay inside a prompt,
    and an unterminated quote or a row with the wrong number of fields is an error naming the file and line.

    Args:
        path: the prompt file.
        limit: keep the first ``limit`` prompts (Peng et al. use AdvBench's first 80).

    Returns:
        The prompts, in file order.
    """
    return _read_file(path, limit, "Prompt", "prompts", "prompts")


def _pair_of(record, where: str) -> tuple[str, str]:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with a prompt and a target, got {type(record).__name__}")
    prompt = _prompt_of(record, where)
    key = next((k for k in TARGET_FIELDS if k in record), None)
    if key is None:
        raise ValueError(f"{where}: record has none of the fields {', '.join(TARGET_FIELDS)}")
    target = record[key]
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"{where}: empty {key!r}")
    return prompt, target


def load_pairs(path: str | Path, limit: int | None = None) -> list[tuple[str, str]]:
    """Read (prompt, target) pairs: an AdvBench-style CSV with ``goal`` and ``target`` columns (or any of
    :data:`PROMPT_FIELDS` and :data:`TARGET_FIELDS`), or a JSON / JSONL list of objects with such fields
    (AsFT's ``instruction`` / ``input`` / ``output`` records too). Errors name the file and line or record."""
    return _read_file(path, limit, "Pair", "records", "(prompt, target) pairs", of=_pair_of)
