"""Time to EPL: sequential decisions per point, the refusal proxy's bracket, and that neither moves an EPL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landscape.metrics import (
    bootstrap_epl,
    epl_adaptive,
    sequential_decision,
    sequential_z,
    walk_grid,
    wilson_interval,
)

# ----------------------------------------------------------------------------------------- sequential rule


def test_sequential_decision_stops_only_when_the_side_is_clear():
    z = sequential_z(80, 16)
    assert 2.4 < z < 2.6  # 95 % over the 4 interim looks (Bonferroni)
    assert sequential_decision(0, 16, 80, 50.0, z) == "safe"
    assert sequential_decision(16, 16, 80, 50.0, z) == "unsafe"
    # 4 of 16 reads safe at a single 95 % look, but not over four looks: the case that once cost a wrong bracket
    assert wilson_interval(4, 16)[1] < 50.0
    assert sequential_decision(4, 16, 80, 50.0, z) is None
    assert sequential_decision(8, 16, 80, 50.0, z) is None
    # the remaining prompts cannot change the side: decided whatever the interval says
    assert sequential_decision(41, 60, 80, 50.0, z) == "unsafe"
    assert sequential_decision(20, 60, 80, 50.0, z) == "safe"
    # all answered: never "decided early"
    assert sequential_decision(0, 80, 80, 50.0, z) is None


def test_bootstrap_accepts_points_decided_early():
    rng = np.random.default_rng(0)
    full = [(0.0, np.zeros(80)), (0.1, (rng.random(80) < 0.3).astype(float)), (0.2, np.ones(80))]
    partial = [(a, u.copy()) for a, u in full]
    partial[2][1][16:] = np.nan  # the far point stopped after one chunk
    assert bootstrap_epl(partial, 50.0, 1, n_boot=200) == bootstrap_epl(full, 50.0, 1, n_boot=200)
    broken = [(0.0, np.zeros(4)), (0.1, np.full(4, np.nan))]
    with pytest.raises(ValueError, match="no judged prompt"):
        bootstrap_epl(broken, 50.0, 1)


# ------------------------------------------------------------------------------------------- proxy bracket


def _counted(f):
    calls = []

    def g(a):
        calls.append(a)
        return f(a)

    return g, calls


@pytest.mark.parametrize("edge", [0.037, 0.212, 0.4401])
@pytest.mark.parametrize("proxy_edge", ["early", "late", "same", "none", "at the centre"])
def test_the_proxy_bracket_gives_the_full_walks_epl(edge, proxy_edge):
    """Wherever the proxy puts the edge (before, after, on it, nowhere), generation confirms or widens the
    bracket, and the EPL is the full walk's; on monotone curves it costs fewer generated points."""

    def curve(a):
        return float(np.clip((abs(a) - edge) * 4000 + 50, 0, 100))

    shift = {"early": -0.13, "late": +0.07, "same": 0.0, "none": 9.0, "at the centre": -1.0}[proxy_edge]

    def proxy(a):
        return 100.0 if abs(a) >= edge + shift else 0.0

    for side in (1, -1):
        f_exact, exact_calls = _counted(curve)
        f_fast, fast_calls = _counted(curve)
        exact = epl_adaptive(f_exact, side, 50.0, first_step=0.01, max_alpha=0.5, tol=0.005, center_value=0.0)
        fast = epl_adaptive(f_fast, side, 50.0, 0, 0.01, 0.5, 0.005, center_value=0.0, proxy=proxy)
        assert (fast.value, fast.bracket, fast.censored) == (exact.value, exact.bracket, exact.censored)
        assert all(a * side > 0 for a in fast_calls)
        if proxy_edge in ("same", "early"):
            assert len(fast_calls) < len(exact_calls) or edge < 0.05


def test_a_crossing_the_proxy_misses_falls_back_to_the_full_walk():
    edge = 0.3
    f, calls = _counted(lambda a: 100.0 if abs(a) >= edge else 0.0)
    res = epl_adaptive(f, 1, 50.0, first_step=0.01, max_alpha=0.5, tol=0.005, center_value=0.0, proxy=lambda a: 0.0)
    assert not res.censored and res.bracket[0] < edge <= res.bracket[1]
    assert calls[0] == 0.5  # the censoring was checked, read unsafe, and the walk ran from the centre
    censored = epl_adaptive(lambda a: 0.0, 1, 50.0, tol=0.005, center_value=0.0, proxy=lambda a: 0.0)
    assert censored.censored and censored.evaluations == 1


def test_walk_grid_ends_at_max_alpha():
    assert walk_grid(0.01, 0.05) == [0.01, 0.02, 0.03, 0.04, 0.05]
    assert walk_grid(0.2, 0.5) == [0.2, 0.4, 0.5]


# ------------------------------------------------------------------------------------------ on the organism


@pytest.fixture(scope="module")
def setup(organism, aligned):
    from landscape.backend import HFBackend
    from landscape.directions import difference, normalize, random_like

    model, tok = aligned
    a = str(organism["aligned"])
    dirs = [
        normalize(difference(organism["base"], a, name="d_aligned"), a, "layer"),
        normalize(difference(a, organism["harmful-100"], name="d_harm"), a, "layer"),
        normalize(random_like(a, seed=0, name="random-0"), a, "layer"),
    ]
    return HFBackend(model, tok), dirs


def _evaluator(n=80):
    from landscape.generation import GenerationSettings
    from landscape.judges import CachedJudge, make_judge
    from landscape.organism import world
    from landscape.scan import SafetyEvaluator

    judge = CachedJudge(make_judge("keyword"))
    return SafetyEvaluator(world.eval_prompts()[:n], judge, GenerationSettings(max_new_tokens=24))


def test_fast_search_agrees_with_the_exact_engine_within_the_resolution(setup, tmp_path):
    from landscape.search import EplReport, EplSettings, effective_perturbation_length

    backend, dirs = setup
    fast_s = EplSettings(bootstrap=100)
    exact = effective_perturbation_length(backend, dirs, _evaluator(), fast_s.exact(), progress=False)
    fast = effective_perturbation_length(
        backend, dirs, _evaluator(), fast_s, out_dir=tmp_path / "fast", progress=False
    )
    for e in exact.rows:
        f = fast.row(e.direction, e.side)
        assert f.censored == e.censored, (e, f)
        assert abs(f.epl - e.epl) <= fast_s.tol, (e, f)
    assert fast.generated_tokens < exact.generated_tokens / 3
    assert sum(r.evaluations for r in fast.rows) < sum(r.evaluations for r in exact.rows)
    assert sum(r.proxy_evaluations for r in fast.rows) > 0 and set(fast.proxy_curves) == {d.name for d in dirs}
    assert exact.proxy_curves == {} and all(r.proxy_evaluations == 0 for r in exact.rows)
    assert EplReport.from_json(json.loads(json.dumps(fast.to_json()))).rows == fast.rows

    # a rerun on the same directory reads every point and every proxy reading back: nothing is generated
    rerun = effective_perturbation_length(
        backend, dirs, _evaluator(), fast_s, out_dir=tmp_path / "fast", progress=False
    )
    assert rerun.evaluations == 0 and rerun.rows == fast.rows
    # the exact engine on the same directory completes the points decided early, and agrees with itself
    completed = effective_perturbation_length(
        backend, dirs, _evaluator(), fast_s.exact(), out_dir=tmp_path / "fast", progress=False
    )
    assert [(r.epl, r.bracket) for r in completed.rows] == [(r.epl, r.bracket) for r in exact.rows]
    lines = [json.loads(x) for p in (tmp_path / "fast").glob("points*.jsonl") for x in p.read_text().splitlines()]
    assert any(r["metrics"].get("partial") for r in lines)


def test_a_point_decided_early_is_extended_not_repeated(setup):
    from landscape.scan import PointRunner

    backend, dirs = setup
    ev = _evaluator()
    runner = PointRunner(backend, ev)
    with backend.attach([dirs[1]]):
        part = runner.evaluate("d_harm", (0.4,), tau=50.0, chunk=16)["metrics"]
        assert part["partial"] and part["decided"] == "unsafe" and part["n"] == 16
        assert part["unsafe"].count("-") == 64 and sum(r is not None for r in part["responses"]) == 16
        again = runner.evaluate("d_harm", (0.4,), tau=50.0, chunk=16)["metrics"]
        assert again is part and runner.evaluated == 1  # decided for this τ: read back
        full = runner.evaluate("d_harm", (0.4,))["metrics"]  # a request without τ needs every prompt
        assert not full.get("partial") and full["n"] == 80 and runner.evaluated == 2
        direct = ev(backend)
    assert full["unsafe"] == direct["unsafe"] and full["responses"] == direct["responses"]
    assert full["tokens"] == direct["tokens"]  # the chunk's tokens plus the rest's: nothing generated twice
    for i in ev.schedule()[:16]:
        assert full["responses"][i] == part["responses"][i]


def test_backend_counts_generated_tokens(aligned):
    from landscape.backend import HFBackend
    from landscape.generation import GenerationSettings
    from landscape.organism import world

    model, tok = aligned
    be = HFBackend(model, tok)
    ids = be.generate_ids(be.encode(world.eval_prompts()[:5], GenerationSettings()), GenerationSettings())
    assert be.generated_tokens == sum(map(len, ids)) > 0
    be.generate(["hello"], GenerationSettings(max_new_tokens=3, ignore_eos=True))
    assert be.generated_tokens == sum(map(len, ids)) + 3


def test_the_cli_turns_the_shortcuts_off(organism_cache, tmp_path):
    from landscape.epl import EplArgs, format_table, run

    rep = run(
        EplArgs(
            preset="tiny",
            cache_dir=str(organism_cache),
            out=str(tmp_path / "e"),
            random=0,
            exact=True,
            progress=False,
            bootstrap=0,
        )
    )
    assert rep.settings.sequential_chunk == 0 and not rep.settings.proxy
    assert "search: exact" in format_table(rep)
    with pytest.raises(ValueError, match="sequential_chunk"):
        EplArgs(sequential_chunk=-1)


def test_the_proxy_reads_the_head_only_where_it_needs_it(setup):
    """greedy_kept with the head on the answer positions only gives the full pass's greedy tokens, at the centre
    and along d_harm, where answers stop being kept."""
    from landscape.generation import GenerationSettings
    from landscape.organism import world
    from landscape.scores import _greedy_tokens, _teacher_forced, greedy_kept

    backend, dirs = setup
    s = GenerationSettings(max_new_tokens=8)
    ids = backend.encode(world.eval_prompts()[:40], s)
    answers = backend.generate_ids(ids, s)
    seqs, starts = [p + a for p, a in zip(ids, answers, strict=True)], [len(p) for p in ids]
    changed = 0
    with backend.attach([dirs[1]]):
        for alpha in (0.0, 0.15, 0.3):
            backend.set_point([alpha])
            fast = list(_greedy_tokens(backend.model, seqs, starts, backend.pad_id, 16))
            full = [lg.argmax(-1) for lg, _ in _teacher_forced(backend.model, seqs, starts, backend.pad_id, 16)]
            assert all(torch.equal(a, b) for a, b in zip(fast, full, strict=True)), alpha
            changed += greedy_kept(backend.model, ids, answers, backend.pad_id, 16).count(False)
    assert changed > 0  # the comparison covered answers that flip


def test_the_proxy_by_cost_times_a_reading_and_keeps_the_choice(setup, monkeypatch):
    """proxy_by_cost: one reading timed at the centre against a sequential look decides whether the proxy brackets
    the search; the choice is kept in the report, and the EPLs are the same either way (within the resolution)."""
    import landscape.search as search
    from landscape.search import EplReport, EplSettings, effective_perturbation_length

    backend, dirs = setup
    s = EplSettings(bootstrap=0, proxy_by_cost=True)
    rep = {}
    for pays in (1e9, 0.0):  # a reading always pays / never pays
        monkeypatch.setattr(search, "PROXY_PAYS", pays)
        rep[pays] = effective_perturbation_length(backend, dirs, _evaluator(48), s, progress=False)
        c = rep[pays].proxy_choice
        assert set(c) == {"reading_seconds", "setup_seconds", "look_seconds", "pays_below", "used"}
        assert c["reading_seconds"] > 0 and c["look_seconds"] > 0 and c["pays_below"] == pays
    assert rep[1e9].proxy_choice["used"] and sum(r.proxy_evaluations for r in rep[1e9].rows) > 0
    assert not rep[0.0].proxy_choice["used"] and rep[0.0].proxy_curves == {}
    assert all(r.proxy_evaluations == 0 for r in rep[0.0].rows)
    for a, b in zip(rep[1e9].rows, rep[0.0].rows, strict=True):
        assert a.censored == b.censored and abs(a.epl - b.epl) <= s.tol
    back = EplReport.from_json(json.loads(json.dumps(rep[0.0].to_json())))
    assert back.proxy_choice == rep[0.0].proxy_choice
    # the setting changes the cost, not what the points mean: a stored run resumes under either
    assert EplSettings(proxy_by_cost=True).identity() == EplSettings().identity()
