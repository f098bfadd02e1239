"""Benchmarks run end to end at a tiny size on the CPU (their real sizes are for the GPU / a long session)."""

import json
import sys
from pathlib import Path

from landscape.io import read_json

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    """Import ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_gpu_benchmark_runs_small_on_cpu(tmp_path):
    bench_gpu = _bench("bench_gpu")
    out = tmp_path / "gpu.json"
    report = bench_gpu.main(
        [
            "--config",
            "tiny",
            "--device",
            "cpu",
            "--points",
            "1",
            "--prompts",
            "4",
            "--new-tokens",
            "4",
            "--json",
            str(out),
        ]
    )
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(report))
    for k in ("ours_s_per_point", "peng_s_per_point", "floor_s_per_point", "speedup_vs_peng", "ratio_to_floor"):
        assert stored[k] > 0


def test_time_to_epl_benchmark_runs_small(tmp_path, organism_cache, monkeypatch):
    monkeypatch.setenv("SAFETY_LANDSCAPE_CACHE", str(organism_cache))
    bench_time_to_epl = _bench("bench_time_to_epl")
    out = tmp_path / "tte.json"
    report = bench_time_to_epl.main(
        [
            "--preset",
            "tiny",
            "--prompts",
            "32",
            "--max-new-tokens",
            "16",
            "--repeats",
            "1",
            "--stride",
            "40",
            "--json",
            str(out),
        ]
    )
    stored = read_json(out)  # standard JSON on disk ("Infinity" for a censored bracket), read back as written
    assert stored == json.loads(json.dumps(report))
    assert stored["same_epl"] is True
    assert 0 < stored["tokens_ratio"] < 1 and stored["seconds_ratio"] > 0
    assert stored["decode_loop_vs_generate"]["identical_answers"] is True
    assert stored["environment"]["threads"] >= 1
