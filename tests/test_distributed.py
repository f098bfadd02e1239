"""Grid points spread over torchrun ranks (gloo, CPU): equal to one process, and a dead rank is made up on rerun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.run")


def _cmd(cache, out, procs: int | None, alphas: str = "-0.1:0.1:9", limit: int = 16):
    args = [
        "-m",
        "landscape.scan",
        "--preset",
        "tiny",
        "--cache-dir",
        str(cache),
        "--direction",
        "d_harm",
        f"--alphas={alphas}",
        "--limit",
        str(limit),
        "--out",
        str(out),
    ]
    if procs is None:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *args]


def _points(out: Path) -> tuple[dict, int]:
    recs = [json.loads(line) for f in sorted(out.glob("points*.jsonl")) for line in f.read_text().splitlines()]
    return {tuple(r["coords"]): (r["metrics"]["asr"], r["metrics"]["responses"]) for r in recs}, len(recs)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_two_gloo_ranks_equal_one_process(organism, organism_cache, tmp_path):
    subprocess.run(_cmd(organism_cache, tmp_path / "one", None), check=True, env=_env(), capture_output=True)
    res = subprocess.run(_cmd(organism_cache, tmp_path / "two", 2), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "two").glob("points*.jsonl")) == [
        "points.rank000.jsonl",
        "points.rank001.jsonl",
    ]
    one, n_one = _points(tmp_path / "one")
    two, n_two = _points(tmp_path / "two")
    assert n_one == n_two == 9 and one == two
    assert "9 of 9 points" in res.stdout


def _worker_pid(out: Path, rank: int) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmd and b"torch.distributed.run" not in cmd and f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


def test_a_killed_rank_loses_only_its_point(organism, organism_cache, tmp_path):
    out = tmp_path / "killed"
    alphas, limit = "-0.1:0.1:41", 32
    proc = subprocess.Popen(
        _cmd(organism_cache, out, 2, alphas, limit), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    victim = out / "points.rank001.jsonl"
    deadline = time.time() + 180
    pid = None
    while time.time() < deadline and proc.poll() is None:
        if victim.is_file() and len(victim.read_bytes().splitlines()) >= 3:
            pid = _worker_pid(out, 1)
            if pid:
                break
        time.sleep(0.02)
    assert pid is not None, "rank 1 should have been running"
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(120) != 0  # torchrun notices the dead rank and stops the run
    _, partial = _points(out)
    assert 3 <= partial < 41
    rerun = subprocess.run(_cmd(organism_cache, out, 2, alphas, limit), env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    subprocess.run(
        _cmd(organism_cache, tmp_path / "clean", None, alphas, limit), check=True, env=_env(), capture_output=True
    )
    merged, n = _points(out)
    clean, _ = _points(tmp_path / "clean")
    assert n == 41 == len(merged)  # nothing lost, nothing done twice
    assert merged == clean
