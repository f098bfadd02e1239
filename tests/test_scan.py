import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from landscape.backend import HFBackend, generate
from landscape.directions import difference, normalize, random_like
from landscape.generation import GenerationSettings
from landscape.judges import CachedJudge, make_judge
from landscape.metrics import epl_adaptive, epl_from_grid
from landscape.organism import world
from landscape.perturb import weights_fingerprint
from landscape.results import POINTS_FILE, ResultsStore, RunMismatchError
from landscape.scan import (
    SafetyEvaluator,
    linspace,
    peng_interpolation_grid,
    peng_random_grid,
    scan,
    scan_1d,
    scan_2d,
)

PROMPTS = world.eval_prompts()[:32]


@pytest.fixture(scope="module")
def d_harm(organism):
    return normalize(difference(organism["aligned"], organism["harmful-10"], name="d_harm"), organism["aligned"])


@pytest.fixture(scope="module")
def backend(aligned):
    model, tok = aligned
    return HFBackend(model, tok)


def _evaluator(max_new_tokens=24):
    return SafetyEvaluator(
        PROMPTS,
        CachedJudge(make_judge("keyword")),
        GenerationSettings(max_new_tokens=max_new_tokens),
        extra_judges=[make_judge("oracle")],
    )


def test_grids():
    assert peng_random_grid(1.0, 20) == pytest.approx(np.linspace(-0.5, 0.5, 21).tolist())
    g = peng_interpolation_grid(20, extend=2)
    assert g[0] == pytest.approx(-0.1) and g[-1] == pytest.approx(1.1) and len(g) == 25
    with pytest.raises(ValueError, match="a grid needs at least one point, got n=0"):
        linspace(0, 1, 0)


def test_scan_leaves_weights_bit_identical_and_alpha0_reproduces(aligned, backend, d_harm):
    model, tok = aligned
    before = weights_fingerprint(model)
    plain = generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=24))
    res = scan_1d(backend, d_harm, [0.0, 0.1, 0.3], _evaluator(), progress=False)
    assert weights_fingerprint(model) == before
    assert res.records[0]["metrics"]["responses"] == plain
    assert res.metric("asr")[0] == 0 and res.metric("asr")[-1] > 50

    class Boom(SafetyEvaluator):
        def __call__(self, backend):
            super().__call__(backend)
            raise RuntimeError("evaluator failed")

    with pytest.raises(RuntimeError, match="evaluator failed"):
        scan_1d(backend, d_harm, [0.03], Boom(PROMPTS, make_judge("keyword")), progress=False)
    assert weights_fingerprint(model) == before


def test_scan_2d_and_cache_saves_judge_calls(backend, organism, d_harm, tmp_path):
    r = normalize(random_like(organism["aligned"], seed=0, name="random-0"), organism["aligned"])
    ev = _evaluator()
    res = scan_2d(backend, d_harm, r, [0.0, 0.01], [-0.01, 0.0, 0.01], ev, out_dir=tmp_path, progress=False)
    assert res.extra["shape"] == (2, 3) and len(res.records) == 6
    assert ev.judge.hits > ev.judge.misses  # most answers near the centre repeat
    lines = (tmp_path / POINTS_FILE).read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["series"] == "d_harm x random-0"


def test_torn_line_is_dropped_and_different_run_refused(backend, d_harm, tmp_path):
    scan_1d(backend, d_harm, [0.0, 0.01], _evaluator(), out_dir=tmp_path, progress=False)
    path = tmp_path / POINTS_FILE
    with open(path, "a") as fh:
        fh.write('{"series": "d_harm", "coords": [0.5], "metr')  # killed mid-write
    res = scan_1d(backend, d_harm, [0.0, 0.01, 0.02], _evaluator(), out_dir=tmp_path, progress=False)
    assert res.evaluated == 1
    assert [json.loads(x)["coords"] for x in path.read_text().splitlines()] == [[0.0], [0.01], [0.02]]
    before = path.read_bytes()
    with pytest.raises(RunMismatchError, match="come from a different run .*evaluator"):
        scan_1d(backend, d_harm, [0.03], _evaluator(max_new_tokens=8), out_dir=tmp_path, progress=False)
    assert path.read_bytes() == before
    res = scan_1d(
        backend, d_harm, [0.03], _evaluator(max_new_tokens=8), out_dir=tmp_path, restart=True, progress=False
    )
    assert res.evaluated == 1 and len(path.read_text().splitlines()) == 1


def test_bad_grids(backend, d_harm):
    with pytest.raises(ValueError, match="alphas has no points"):
        scan_1d(backend, d_harm, [], _evaluator())
    with pytest.raises(ValueError, match="non-finite"):
        scan_1d(backend, d_harm, [0.0, float("nan")], _evaluator())


SCAN_SCRIPT = """
import sys
from landscape.directions import difference, normalize
from landscape.backend import HFBackend
from landscape.generation import GenerationSettings
from landscape.judges import make_judge
from landscape.loading import load_model
from landscape.organism import world
from landscape.scan import SafetyEvaluator, linspace, scan_1d
aligned, harmful, out = sys.argv[1:4]
model, tok = load_model(aligned)
d = normalize(difference(aligned, harmful, name="d_harm"), aligned)
ev = SafetyEvaluator(world.eval_prompts()[:64], make_judge("keyword"), GenerationSettings(max_new_tokens=32))
scan_1d(HFBackend(model, tok), d, linspace(-0.1, 0.1, 41), ev, out_dir=out, progress=False)
"""


def _run_scan(organism, out, kill_after=None):
    args = [sys.executable, "-c", SCAN_SCRIPT, str(organism["aligned"]), str(organism["harmful-10"]), str(out)]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if kill_after is None:
        assert proc.wait(300) == 0
        return
    path = out / POINTS_FILE
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if path.is_file() and len(path.read_bytes().splitlines()) >= kill_after:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkilled_scan_resumes_to_the_uninterrupted_result(organism, tmp_path):
    _run_scan(organism, tmp_path / "killed", kill_after=7)
    partial = (tmp_path / "killed" / POINTS_FILE).read_bytes().splitlines()
    assert 7 <= len(partial) < 41, "the kill should land mid-run"
    _run_scan(organism, tmp_path / "killed")
    _run_scan(organism, tmp_path / "clean")

    def load(d):
        recs = [json.loads(x) for x in (d / POINTS_FILE).read_text().splitlines()]
        return {tuple(r["coords"]): (r["metrics"]["asr"], r["metrics"]["responses"]) for r in recs}, len(recs)

    killed, n_killed = load(tmp_path / "killed")
    clean, _ = load(tmp_path / "clean")
    assert n_killed == 41 == len(killed)  # nothing lost, nothing duplicated
    assert killed == clean


def test_adaptive_epl_equals_grid_epl_on_the_organism(backend, d_harm):
    ev = _evaluator()
    grid = linspace(0.0, 0.3, 61)  # resolution 0.005 (organism v3: the tiny d_harm edge lies near 0.2)
    res = scan_1d(backend, d_harm, grid, ev, progress=False)
    from_grid = epl_from_grid(grid, res.metric("asr"), 50.0, side=1)
    with backend.attach([d_harm]):

        def f(a):
            backend.set_point((a,))
            return ev(backend)["asr"]

        adaptive = epl_adaptive(f, 1, 50.0, first_step=0.01, max_alpha=0.5, tol=0.005)
    assert not from_grid.censored and not adaptive.censored
    assert abs(adaptive.value - from_grid.value) <= 0.005
    assert adaptive.evaluations < 30  # the walk to ~0.2 at step 0.01, then one bisection step


def test_results_store_requires_run_file(tmp_path):
    (tmp_path / POINTS_FILE).write_text('{"series": "x", "coords": [0], "metrics": {}}\n')
    with pytest.raises(RunMismatchError, match="has points but no run.json"):
        ResultsStore(tmp_path, {"a": 1})


def test_scan_checks_coordinates(backend, d_harm):
    with pytest.raises(ValueError, match=r"point \(0.1, 0.2\) has 2 coordinates for 1 directions"):
        scan(backend, [d_harm], [(0.1, 0.2)], _evaluator())


def test_deferred_judging_equals_judging_per_point_in_one_batched_pass(backend, d_harm, tmp_path):
    """Model judges can run after generation: one call per judge over every point of the scan, same numbers."""
    from landscape.judges import Judge, make_judge
    from landscape.results import RUN_FILE
    from landscape.scan import judge_pending

    class Counting(Judge):
        name = "keyword"

        def __init__(self):
            self.inner, self.calls = make_judge("keyword"), []

        def key(self):
            return self.inner.key()

        def judge(self, prompts, responses):
            self.calls.append(len(prompts))
            return self.inner(prompts, responses)

    grid = [-0.05, 0.0, 0.03, 0.06]
    s = GenerationSettings(max_new_tokens=16)
    now = SafetyEvaluator(PROMPTS, make_judge("keyword"), s, [make_judge("oracle")])
    direct = scan_1d(backend, d_harm, grid, now, progress=False)
    counting = Counting()
    later = SafetyEvaluator(PROMPTS, counting, s, [make_judge("oracle")], defer_judging=True)
    res = scan_1d(backend, d_harm, grid, later, out_dir=tmp_path / "d", progress=False)
    assert all(r["metrics"]["pending"] for r in res.records) and counting.calls == []
    with ResultsStore(tmp_path / "d", json.loads((tmp_path / "d" / RUN_FILE).read_text())) as store:
        judge_pending(res, later, store)
    assert len(counting.calls) == 1 and counting.calls[0] <= len(PROMPTS) * len(grid)  # one pass, distinct pairs
    for a, b in zip(direct.records, res.records, strict=True):
        assert a["metrics"]["asr"] == b["metrics"]["asr"] and a["metrics"]["asr_oracle"] == b["metrics"]["asr_oracle"]
    again = scan_1d(backend, d_harm, grid, later, out_dir=tmp_path / "d", progress=False)
    assert again.evaluated == 0 and not any(r["metrics"].get("pending") for r in again.records)  # stored judged
