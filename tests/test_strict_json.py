"""Every JSON file the toolkit writes is standard JSON and reads back losslessly (issue 26)."""

import json
import math

import numpy as np
import pytest

from landscape.io import NONFINITE, atomic_write_json, dumps, loads, read_json


def strict_parse(text: str):
    """Parse as JavaScript's JSON.parse does: a bare NaN / Infinity is an error."""

    def refuse(name):
        raise ValueError(f"bare {name}")

    return json.loads(text, parse_constant=refuse)


def every_json_file(root):
    for p in sorted(root.rglob("*")):
        if p.suffix == ".json":
            yield p, [p.read_text()]
        elif p.suffix == ".jsonl":
            yield p, [ln for ln in p.read_text().splitlines() if ln.strip()]


def test_non_finite_values_are_strings_and_come_back():
    obj = {
        "epl": 0.5, "ci": [0.5, math.inf], "low": -math.inf, "z": float("nan"),
        "np": [np.float32(0.25), np.float64("inf"), np.int64(3), np.bool_(True)],
        "answer": "NaN", "answers": ["Infinity", "fine"],
    }  # fmt: skip
    text = dumps(obj)
    raw = strict_parse(text)
    assert raw["ci"] == [0.5, "Infinity"] and raw["low"] == "-Infinity" and raw["z"] == "NaN"
    back = loads(text, strict=True)
    assert back["ci"][1] == math.inf and back["low"] == -math.inf and math.isnan(back["z"])
    assert back["np"] == [0.25, math.inf, 3, True]
    assert back["answer"] == "NaN" and back["answers"] == ["Infinity", "fine"]  # text stays text
    assert set(NONFINITE) == {"Infinity", "-Infinity", "NaN"}


def test_strict_reading_refuses_bare_tokens_and_lenient_reading_accepts_old_files(tmp_path):
    old = tmp_path / "old.json"
    old.write_text('{"ci": [0.5, Infinity]}')
    assert read_json(old)["ci"][1] == math.inf  # a run written before this change still loads
    with pytest.raises(ValueError, match="bare Infinity"):
        read_json(old, strict=True)
    atomic_write_json(tmp_path / "new.json", {"ci": [0.5, math.inf]})
    assert "Infinity" not in (tmp_path / "new.json").read_text().replace('"Infinity"', "")


def test_an_epl_runs_files_are_standard_json_and_its_report_round_trips(epl_report):
    """results.json, run.json, points.jsonl and every other JSON of a real EPL run parse strictly; the report
    loads back to the same rows (a censored edge keeps its infinite upper bound)."""
    from landscape.search import REPORT_FILE, EplReport

    report, out = epl_report
    files = list(every_json_file(out))
    assert any(p.name == REPORT_FILE for p, _ in files) and any(p.suffix == ".jsonl" for p, _ in files)
    for p, docs in files:
        for doc in docs:
            try:
                strict_parse(doc)
            except ValueError as e:
                raise AssertionError(f"{p}: {e}") from None
    again = EplReport.load(out / REPORT_FILE)
    assert [(r.direction, r.side, r.epl, r.censored) for r in again.rows] == [
        (r.direction, r.side, r.epl, r.censored) for r in report.rows
    ]
    for a, b in zip(again.rows, report.rows, strict=True):
        assert (a.ci and list(a.ci)) == (b.ci and list(b.ci))
        assert list(a.bracket) == list(b.bracket)
    assert any(math.isinf(r.bracket[1]) for r in again.rows)  # the censored edge: [0.5, "Infinity"] on disk
