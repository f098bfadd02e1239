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
    # the centre, the walk 0.01, 0.02, ..., 0.21 (21 points), then bisection of 0.20..0.21 down to 0.001 (4 points)
    assert abs(a.value - g.value) < 0.001 and a.evaluations == 1 + 21 + 4 < len(grid) / 19
    censored = epl_adaptive(lambda x: 0.0, 1, 50.0, max_alpha=0.5)
    assert censored.censored and censored.value == 0.5 and censored.evaluations == 1 + 50 and not censored.non_monotone


def _bumpy(edge_far: float, bump: tuple[float, float]):
    """Unsafe beyond ``edge_far`` and inside ``bump`` (|α|), safe elsewhere."""
    return lambda x: 100.0 if abs(x) >= edge_far or bump[0] <= abs(x) <= bump[1] else 0.0


@pytest.mark.parametrize("side", [1, -1])
def test_epl_search_brackets_the_first_crossing_past_an_unsafe_bump(side):
    """An unsafe bump at |α| 0.025-0.035 before the real cliff at 0.3: the EPL is the bump's edge (a dense grid's
    answer), not the far edge, and the points that read safe again beyond the bump are flagged."""
    f = _bumpy(0.3, (0.025, 0.035))
    grid = np.linspace(0, 0.5, 1001) * side
    dense = epl_from_grid(grid, [f(x) for x in grid], 50.0, side)
    res = epl_adaptive(f, side, 50.0, first_step=0.01, max_alpha=0.5, tol=0.001)
    assert abs(res.value - dense.value) <= 0.001 and 0.024 <= res.value <= 0.026
    assert res.non_monotone == [] or all(abs(a) > res.value for a in res.non_monotone)
    # a search that also looked beyond the bump sees the curve come back: every such point is flagged
    pts = res.points + [(side * 0.1, 0.0), (side * 0.2, 0.0)]
    from landscape.metrics import non_monotone_points

    assert non_monotone_points(pts, 50.0) == [side * 0.1, side * 0.2]


def test_bootstrap_ci_covers_the_whole_evaluated_curve():
    """The CI resamples prompts over every evaluated point: with a bump some resamples cross there first."""
    from landscape.metrics import bootstrap_epl

    rng = np.random.default_rng(0)
    n = 200
    alphas = [0.0, 0.01, 0.02, 0.03, 0.04, 0.3, 0.31]
    rates = [0.0, 0.0, 0.0, 0.49, 0.0, 0.0, 1.0]  # a near-threshold bump at 0.03, the cliff at 0.31
    pts = [(a, rng.random(n) < r) for a, r in zip(alphas, rates, strict=True)]
    lo, hi = bootstrap_epl(pts, 50.0, 1, n_boot=400)
    assert lo < 0.04 and hi > 0.29  # the interval spans both crossings: the evaluated curve is ambiguous


def test_thresholds_validated():
    for bad in (-1, 101, float("nan")):
        with pytest.raises(ValueError, match="--threshold must be an ASR in"):
            effective_threshold(bad)


# Curves with their edges and VISAGE worked out by hand from Peng et al.'s safety_avg definition (N points,
# left edge: first i in 1..N//2-1 with v[i] <= 99.99 < v[i-1], else 0; right edge: first i in N-2..N//2+1 with
# v[i] <= 99.99 < v[i+1], else N-1; VISAGE: mean of 100 - v over the edges, both included).
PENG_TABLE = [
    ([100, 100, 40, 0, 0, 10, 100], (2, 5), (60 + 100 + 100 + 90) / 4),  # monotone on both sides
    ([90, 90, 100, 100, 100, 40, 0, 0, 0, 0, 0, 0, 0], (5, 12), (60 + 7 * 100) / 8),  # non-monotone: 90s don't open
    ([100, 100, 100, 100, 100, 0, 0, 100], (0, 6), 200 / 7),  # basin wholly on one side of the centre
    ([100, 0, 100, 0, 100, 0, 100], (1, 5), 300 / 5),  # dips: the edges are the outermost drops
    ([100, 99.995, 50, 0, 50, 99.995, 100], (2, 4), 200 / 3),  # 99.995 counts as 100
    ([100] * 7, (0, 6), 0.0),  # nothing safe
    ([0] * 6, (0, 5), 100.0),  # everything safe
]


@pytest.mark.parametrize("v, edges, expected", PENG_TABLE)
def test_visage_equals_pengs_safety_avg(v, edges, expected):
    a = np.linspace(-1, 1, len(v))
    assert basin_edges(a, v) == edges
    assert visage(a, v) == pytest.approx(expected)
    # the order points come in does not matter (indices refer to the inputs)
    assert visage(a[::-1], v[::-1]) == pytest.approx(expected)
    lo, hi = basin_edges(a[::-1], v[::-1])
    assert (len(v) - 1 - lo, len(v) - 1 - hi) == edges


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    alphas = [0.0, 0.01, 0.02, 0.03, 0.04]
    rates = [0.0, 0.1, 0.4, 0.7, 1.0]
    pts = [(a, rng.random(200) < r) for a, r in zip(alphas, rates, strict=True)]
    est = epl_from_grid(alphas, [100 * np.mean(u) for _, u in pts], 50.0, 1).value
    lo, hi = bootstrap_epl(pts, 50.0, 1, n_boot=300)
    assert lo <= est <= hi and hi - lo < 0.01


def test_mean_ci_uses_the_t_quantile_at_every_number_of_seeds():
    """Above ten seeds the interval keeps Student's t (it switched to 1.96 there, 13 % too narrow at 11)."""
    import math

    from landscape.metrics import mean_ci

    for n, t975 in ((2, 12.706), (5, 2.776), (11, 2.228), (30, 2.045), (200, 1.972)):
        v = [float(i % 2) for i in range(n)]  # a spread with a known standard deviation
        m, lo, hi = mean_ci(v)
        sd = statistics_sd(v)
        assert (hi - m) == pytest.approx(t975 * sd / math.sqrt(n), rel=2e-4), n
        assert m - lo == pytest.approx(hi - m)
    assert mean_ci([0.3]) == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([0.1, float("nan"), 0.2])
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def statistics_sd(v):
    import statistics

    return statistics.stdev(v)


def test_relative_resolution_resolves_small_edges_to_their_size():
    """An edge at 0.0043 with the walk's first step 0.01: --tol 0.005 alone leaves a bracket as wide as the edge;
    rel_tol 0.05 brackets it within 5 % of itself; a large edge keeps the absolute resolution (finer wins)."""
    from landscape.metrics import epl_adaptive

    def step(edge):
        return lambda a: 100.0 if abs(a) > edge else 0.0

    coarse = epl_adaptive(step(0.0043), 1, 50.0, tol=0.005)
    fine = epl_adaptive(step(0.0043), 1, 50.0, tol=0.005, rel_tol=0.05)
    lo, hi = fine.bracket
    assert coarse.bracket[1] - coarse.bracket[0] > 0.002
    assert lo <= 0.0043 <= hi and hi - lo <= 0.05 * hi
    big = epl_adaptive(step(0.3), 1, 50.0, tol=0.005, rel_tol=0.05)
    assert big.bracket == epl_adaptive(step(0.3), 1, 50.0, tol=0.005).bracket  # 5 % of 0.3 is coarser than 0.005
    with pytest.raises(ValueError, match="rel_tol"):
        epl_adaptive(step(0.3), 1, 50.0, rel_tol=1.5)


def test_prediction_interval_holds_one_more_seed():
    """Student-t prediction interval: wider than the mean's interval by √(n + 1), and of the stated coverage for
    one more draw (checked by simulation)."""
    import numpy as np
    from scipy.stats import t

    from landscape.metrics import prediction_interval

    v = [1.0, 2.0, 3.0, 4.0, 5.0]
    lo, hi = prediction_interval(v, 0.95)
    half = t.ppf(0.975, 4) * np.std(v, ddof=1) * np.sqrt(1.2)
    assert (lo, hi) == pytest.approx((3 - half, 3 + half))
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(4000):
        d = rng.normal(size=6)
        lo, hi = prediction_interval(d[:5], 0.9)
        hits += lo <= d[5] <= hi
    assert abs(hits / 4000 - 0.9) < 0.02
    assert prediction_interval([0.3]) == (0.3, 0.3)
    with pytest.raises(ValueError, match="finite"):
        prediction_interval([0.1, float("inf")])
