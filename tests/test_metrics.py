import numpy as np
import pytest

from landscape.metrics import (
    asr,
    basin_edges,
    bootstrap_epl,
    effective_threshold,
    epl_adaptive,
    epl_from_grid,
    visage,
    wilson_interval,
)


def test_asr_and_wilson():
    assert asr([True, False, False, True]) == 50.0 and asr([]) == 0.0
    lo, hi = wilson_interval(0, 80)
    assert lo == 0.0 and hi == pytest.approx(4.58, abs=0.01)
    lo, hi = wilson_interval(40, 80)
    assert 50 - lo == pytest.approx(hi - 50)
    assert wilson_interval(80, 80)[1] == 100.0


def test_epl_from_grid_interpolates_first_crossing():
    a = np.round(np.linspace(-1, 1, 21), 10)
    v = np.where(a >= 0.3, 100.0, 0.0) + np.where(a <= -0.6, 80.0, 0.0)
    plus = epl_from_grid(a, v, 50.0, side=1)
    assert plus.value == pytest.approx(0.25) and plus.bracket == pytest.approx((0.2, 0.3)) and not plus.censored
    minus = epl_from_grid(a, v, 50.0, side=-1)
    assert minus.value == pytest.approx(0.5 + 0.1 * 50 / 80)
    # relative threshold: centre at 30 %, tau 20 -> unsafe above 50 %
    v2 = np.where(np.abs(a) >= 0.5, 100.0, 30.0)
    assert epl_from_grid(a, v2, 20.0, 1, relative=True).threshold == 50.0
    # never crosses: censored at the largest |alpha|
    flat = epl_from_grid(a, np.zeros_like(a), 50.0, 1)
    assert flat.censored and flat.value == 1.0
    # unsafe at the centre: EPL 0
    assert epl_from_grid(a, np.full_like(a, 90.0), 50.0, 1).value == 0.0
    # the first crossing counts, even if the curve dips back below
    bumpy = np.where((a >= 0.2) & (a <= 0.3), 100.0, 0.0)
    assert epl_from_grid(a, bumpy, 50.0, 1).value == pytest.approx(0.15)


def test_epl_adaptive_finds_the_edge_in_few_evaluations():
    edge = 0.01234
    res = epl_adaptive(lambda x: 100.0 if x >= edge else 0.0, 1, 50.0, first_step=0.01, max_alpha=0.5, tol=0.001)
    assert res.bracket[0] <= edge <= res.bracket[1] and res.bracket[1] - res.bracket[0] <= 0.001
    assert res.evaluations <= 8
    neg = epl_adaptive(lambda x: 100.0 if x <= -0.3 else 0.0, -1, 50.0, tol=0.001)
    assert abs(neg.value - 0.3) <= 0.001 and all(x <= 0 for x, _ in neg.points)
    smooth = lambda x: 100 / (1 + np.exp(-(x - 0.2) / 0.01))  # noqa: E731
    grid = np.linspace(0, 0.5, 501)
    g = epl_from_grid(grid, smooth(grid), 50.0, 1)
    a = epl_adaptive(smooth, 1, 50.0, tol=0.001)
    assert abs(a.value - g.value) < 0.001 and a.evaluations < 20
    censored = epl_adaptive(lambda x: 0.0, 1, 50.0, max_alpha=0.5)
    assert censored.censored and censored.value == 0.5


def test_thresholds_validated():
    for bad in (-1, 101, float("nan")):
        with pytest.raises(ValueError, match="threshold must be an ASR in"):
            effective_threshold(bad)


def test_visage_follows_pengs_walk():
    a = np.linspace(-3, 3, 7)
    v = [100, 100, 40, 0, 0, 10, 100]
    assert basin_edges(a, v) == (2, 5)
    assert visage(a, v) == pytest.approx(np.mean([60, 100, 100, 90]))
    assert visage(a, [100] * 7) == 0.0 and basin_edges(a, [100] * 7) is None
    # a dip inside is part of the basin: the walk starts from the ends
    assert visage(a, [100, 0, 100, 0, 100, 0, 100]) == pytest.approx(np.mean([100, 0, 100, 0, 100]))
    assert visage(a[::-1], v[::-1]) == visage(a, v)  # order of points does not matter


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    alphas = [0.0, 0.01, 0.02, 0.03, 0.04]
    rates = [0.0, 0.1, 0.4, 0.7, 1.0]
    pts = [(a, rng.random(200) < r) for a, r in zip(alphas, rates, strict=True)]
    est = epl_from_grid(alphas, [100 * np.mean(u) for _, u in pts], 50.0, 1).value
    lo, hi = bootstrap_epl(pts, 50.0, 1, n_boot=300)
    assert lo <= est <= hi and hi - lo < 0.01
