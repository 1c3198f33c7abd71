import math

import numpy as np
import pytest

from covidct.evaluation.metrics import binary_metrics
from covidct.evaluation.statistics import (
    bootstrap_intervals,
    delong_interval,
    delong_paired_test,
    wilson_interval,
)


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(83, 98), (0, 10), (10, 10), (165, 203)])
def test_wilson_matches_the_formula(k, n):
    ci = wilson_interval(k, n)
    lo, hi = _wilson_by_hand(k, n)
    assert ci.low == pytest.approx(lo, abs=1e-9) and ci.high == pytest.approx(hi, abs=1e-9)
    assert 0 <= ci.low <= k / n <= ci.high <= 1


def test_wilson_no_trials():
    assert math.isnan(wilson_interval(0, 0).low)


def _delong_by_definition(pos, neg):
    """O(m n) DeLong with the psi kernel written out, as an independent check."""
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    return psi.mean(), v10, v01


def _data(seed=0, m=40, n=50, shift=1.0):
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(shift, 1, m), 1)  # rounding makes ties, which DeLong must handle
    neg = np.round(rng.normal(0, 1, n), 1)
    y = np.r_[np.ones(m, int), np.zeros(n, int)]
    return y, np.r_[pos, neg], pos, neg


def test_delong_matches_definition():
    y, s, pos, neg = _data()
    auc, se, ci = delong_interval(y, s)
    ref_auc, v10, v01 = _delong_by_definition(pos, neg)
    ref_se = math.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))
    assert auc == pytest.approx(ref_auc) and auc == pytest.approx(binary_metrics(y, s).auc)
    assert se == pytest.approx(ref_se)
    assert ci.low < auc < ci.high


def test_delong_paired_identical_and_different():
    y, s, _, _ = _data(1)
    same = delong_paired_test(y, s, s)
    assert same.difference == 0 and same.p_value == 1.0
    noise = np.random.default_rng(2).normal(0, 1, len(y))
    t = delong_paired_test(y, s, noise)
    assert t.difference > 0.2 and t.p_value < 0.01 and t.interval.low > 0
    # the paired variance from the definition
    a = _delong_by_definition(s[y == 1], s[y == 0])
    b = _delong_by_definition(noise[y == 1], noise[y == 0])
    m, n = (y == 1).sum(), (y == 0).sum()
    var = np.var(a[1] - b[1], ddof=1) / m + np.var(a[2] - b[2], ddof=1) / n
    assert t.se == pytest.approx(math.sqrt(var))


def test_bootstrap_intervals_cover_the_estimate_and_repeat():
    y, s, _, _ = _data(3)
    s = 1 / (1 + np.exp(-s))
    point = binary_metrics(y, s, 0.5)
    ci = bootstrap_intervals(y, s, 0.5, n_resamples=500, seed=7)
    for name in ("accuracy", "sensitivity", "specificity", "auc", "f1"):
        assert ci[name].low <= getattr(point, name) <= ci[name].high, name
        assert ci[name].high - ci[name].low > 0.01, name
    again = bootstrap_intervals(y, s, 0.5, n_resamples=500, seed=7)
    assert again == ci
    # the DeLong and bootstrap AUC intervals agree roughly
    _, _, dl = delong_interval(y, s)
    assert abs((dl.high - dl.low) - (ci["auc"].high - ci["auc"].low)) < 0.05


def test_bootstrap_is_stratified():
    """Perfectly separated classes: every stratified resample separates them too, so AUC is exactly 1."""
    y = np.r_[np.ones(20, int), np.zeros(30, int)]
    s = np.r_[np.linspace(0.6, 1, 20), np.linspace(0, 0.4, 30)]
    ci = bootstrap_intervals(y, s, n_resamples=200)
    assert ci["auc"].low == ci["auc"].high == 1.0
    assert ci["sensitivity"].low == 1.0 and ci["specificity"].low == 1.0


def test_bootstrap_one_class_is_nan():
    ci = bootstrap_intervals([0, 0, 0], [0.1, 0.2, 0.3], n_resamples=50)
    assert math.isnan(ci["auc"].low)


def test_roc_band_brackets_the_curve():
    from covidct.evaluation.metrics import roc_points
    from covidct.evaluation.statistics import roc_band

    y, s, _, _ = _data(5)
    grid, lo, hi = roc_band(y, s, n_resamples=200)
    fpr, tpr, _ = roc_points(y, s)
    mid = np.interp(grid, fpr, tpr)
    assert np.all(lo <= hi) and np.all((lo >= 0) & (hi <= 1))
    inside = (lo - 1e-9 <= mid) & (mid <= hi + 1e-9)
    assert inside.mean() > 0.9
    assert (hi - lo)[10:90].mean() > 0.05  # a real band, not a line
