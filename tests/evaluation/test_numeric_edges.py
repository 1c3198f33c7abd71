"""Boundaries and contracts of the numeric core that the mutation run (make mutation, benchmarks/MUTATION.md) found
untested: the smallest samples that still give an interval, the exact values of degenerate cases, defaults the
methods text documents, and each vectorised helper against an independent computation."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from covidct.evaluation.calibration import expected_calibration_error, fit_temperature, logit, reliability_curve
from covidct.evaluation.metrics import binary_metrics, predict, threshold_for_sensitivity
from covidct.evaluation.statistics import (
    BOOTSTRAP_METRICS,
    _auc_mann_whitney,
    _delong_components,
    _metrics_from_split_scores,
    bootstrap_intervals,
    delong_interval,
    delong_paired_test,
    roc_band,
    wilson_interval,
)

TWO_EACH = ([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1])  # the smallest sample with a variance in each class
ONE_POSITIVE = ([1, 0, 0, 0], [0.9, 0.4, 0.6, 0.1])


def _all_nan(*values) -> bool:
    return all(isinstance(v, float) and math.isnan(v) for v in values)


# -- the documented defaults (README "Statistics"): a report's numbers depend on them --------------------------------


def test_documented_defaults():
    rng = np.random.default_rng(10)
    s = rng.uniform(0, 1, 60)
    y = (rng.uniform(0, 1, 60) < 0.5 + 0.4 * (s - 0.5)).astype(int)
    assert bootstrap_intervals(y, s) == bootstrap_intervals(y, s, 0.5, n_resamples=2000, confidence=0.95, seed=0)
    band, ref = roc_band(y, s), roc_band(y, s, n_resamples=1000, confidence=0.95, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(band, ref))
    assert expected_calibration_error(y, s) == expected_calibration_error(y, s, n_bins=10)
    assert expected_calibration_error(y, s) != expected_calibration_error(y, s, n_bins=11)  # the check can fail
    assert np.array_equal(reliability_curve(y, s)[0], reliability_curve(y, s, n_bins=10)[0])
    assert reliability_curve(y, s)[0].size != reliability_curve(y, s, n_bins=11)[0].size
    assert threshold_for_sensitivity(y, s) == threshold_for_sensitivity(y, s, 0.95)
    assert predict([0.5, 0.49]).tolist() == [1, 0]


# -- two per class is enough; one is not, and then every field is NaN -----------------------------------------------


def test_two_per_class_gives_finite_intervals():
    y, s = TWO_EACH
    auc, se, ci = delong_interval(y, s)
    assert auc == 0.75 and se > 0 and 0 <= ci.low < ci.high <= 1
    t = delong_paired_test(y, s, [0.8, 0.7, 0.2, 0.3])
    assert t.auc_a == 0.75 and t.auc_b == 1.0 and math.isfinite(t.se) and math.isfinite(t.p_value)
    boot = bootstrap_intervals(y, s, n_resamples=50)
    defined = ("accuracy", "sensitivity", "specificity", "f1", "auc")  # PPV/NPV can be 0/0 in a resample
    assert all(math.isfinite(boot[m].low) and math.isfinite(boot[m].high) for m in defined)
    _, lo, hi = roc_band(y, s, n_resamples=20)
    assert np.isfinite(lo).all() and np.isfinite(hi).all()


@pytest.mark.parametrize("y,s", [ONE_POSITIVE, ([0, 1, 1, 1], [0.9, 0.4, 0.6, 0.1])])
def test_one_in_a_class_gives_nan_everywhere(y, s):
    auc, se, ci = delong_interval(y, s)
    assert _all_nan(auc, se, ci.low, ci.high)
    t = delong_paired_test(y, s, s)
    assert _all_nan(t.auc_a, t.auc_b, t.difference, t.se, t.interval.low, t.interval.high, t.p_value)
    boot = bootstrap_intervals(y, s, n_resamples=20)
    assert all(_all_nan(boot[m].low, boot[m].high) for m in BOOTSTRAP_METRICS)
    grid, lo, hi = roc_band(y, s, n_resamples=20)
    assert grid.shape == lo.shape == hi.shape == (101,) and np.isnan(lo).all() and np.isnan(hi).all()


def test_wilson_no_trials_is_nan_at_both_ends():
    ci = wilson_interval(0, 0)
    assert _all_nan(ci.low, ci.high)


def test_wilson_honours_the_confidence_level():
    k, n, z = 11, 15, 1.6448536269514722  # 90%
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    ci = wilson_interval(k, n, confidence=0.90)
    assert ci.low == pytest.approx(centre - half, abs=1e-9) and ci.high == pytest.approx(centre + half, abs=1e-9)


# -- DeLong ----------------------------------------------------------------------------------------------------------


def test_delong_components_match_the_definition():
    rng = np.random.default_rng(4)
    pos, neg = np.round(rng.normal(1, 1, 12), 1), np.round(rng.normal(0, 1, 9), 1)
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc, v10, v01 = _delong_components(pos, neg)
    assert auc == pytest.approx(psi.mean())
    np.testing.assert_allclose(v10, psi.mean(1))
    np.testing.assert_allclose(v01, psi.mean(0))


def test_delong_interval_is_clipped_to_the_unit_interval():
    # AUC 0.96 on 5 + 5 images: AUC + 1.96 SE passes 1, and the interval stops there
    y = [1] * 5 + [0] * 5
    s = [0.9, 0.8, 0.7, 0.6, 0.35, 0.4, 0.3, 0.2, 0.1, 0.05]
    auc, se, ci = delong_interval(y, s)
    assert auc == pytest.approx(0.96) and auc + 1.96 * se > 1 and ci.high == 1.0
    auc, se, ci = delong_interval(y, [1 - v for v in s])  # the mirror: the low end stops at 0
    assert auc == pytest.approx(0.04) and auc - 1.96 * se < 0 and ci.low == 0.0


def test_paired_test_reports_each_auc_and_a_zero_se_difference():
    y = [1, 1, 1, 0, 0, 0]
    perfect = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]
    constant = [0.5] * 6
    t = delong_paired_test(y, perfect, constant)
    assert (t.auc_a, t.auc_b, t.difference, t.se) == (1.0, 0.5, 0.5, 0.0)
    assert t.p_value == 0.0  # a difference with no variance at all is not "p = 1"
    same = delong_paired_test(y, constant, constant)
    assert same.se == 0.0 and same.p_value == 1.0


# -- the vectorised bootstrap statistic ------------------------------------------------------------------------------


def _scores(seed=0, m=30, n=40):
    rng = np.random.default_rng(seed)
    pos = np.round(rng.uniform(0.2, 1.0, m), 2)  # rounded: ties between and at the threshold
    neg = np.round(rng.uniform(0.0, 0.8, n), 2)
    return pos, neg


def test_bootstrap_statistic_equals_binary_metrics_on_the_sample():
    pos, neg = _scores()
    for threshold in (0.5, 0.31, 0.9):
        got = _metrics_from_split_scores(pos, neg, threshold)
        ref = binary_metrics(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg], threshold)
        np.testing.assert_allclose(got, [getattr(ref, m) for m in BOOTSTRAP_METRICS], err_msg=str(threshold))


def test_bootstrap_statistic_is_inclusive_at_the_threshold():
    got = _metrics_from_split_scores(np.array([0.5, 0.5]), np.array([0.5, 0.2]), 0.5)
    acc, sens, spec = got[:3]
    assert sens == 1.0 and spec == 0.5 and acc == 0.75  # score >= threshold is COVID, as in predict()


def test_bootstrap_statistic_is_silent_when_a_ratio_is_undefined():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _metrics_from_split_scores(np.array([0.1, 0.2]), np.array([0.1, 0.3]), 0.9)  # nothing predicted 1
    assert math.isnan(got[3]) and got[4] == 0.5  # PPV undefined, NPV 2/4


def test_mann_whitney_auc_along_any_axis():
    pos, neg = _scores(1)
    ref = roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg])
    assert _auc_mann_whitney(pos, neg) == pytest.approx(ref)
    # resamples stacked along axis 0 and along a middle axis give the per-resample AUC
    pos3, neg3 = np.stack([pos, pos[::-1], pos]), np.stack([neg, neg, neg[::-1]])
    np.testing.assert_allclose(_auc_mann_whitney(pos3.T, neg3.T, axis=0), [ref] * 3)
    np.testing.assert_allclose(_auc_mann_whitney(pos3[:, None, :], neg3[:, None, :], axis=-1), [[ref]] * 3)
    np.testing.assert_allclose(
        _auc_mann_whitney(pos3[:, :, None].repeat(2, 2), neg3[:, :, None].repeat(2, 2), axis=1), [[ref, ref]] * 3
    )
    # every pair tied: 0.5, not 0 or 1
    assert _auc_mann_whitney(np.full(3, 0.4), np.full(4, 0.4)) == 0.5


def test_bootstrap_honours_resamples_and_confidence():
    pos, neg = _scores(2)
    y, s = np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]
    wide = bootstrap_intervals(y, s, n_resamples=400, confidence=0.95, seed=3)
    narrow = bootstrap_intervals(y, s, n_resamples=400, confidence=0.50, seed=3)
    for m in ("accuracy", "auc", "sensitivity"):
        assert narrow[m].high - narrow[m].low < 0.6 * (wide[m].high - wide[m].low), m
    # the same as scipy's percentile bootstrap of scikit-learn's AUC, resample for resample (covidct draws in
    # batches of 100 to bound memory; so does the reference)
    ref = stats.bootstrap(
        (pos, neg),
        lambda p, n: roc_auc_score(np.r_[np.ones(p.size), np.zeros(n.size)], np.r_[p, n]),
        n_resamples=400,
        confidence_level=0.95,
        method="percentile",
        vectorized=False,
        batch=100,
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert wide["auc"].low == pytest.approx(ref.low, abs=1e-12)
    assert wide["auc"].high == pytest.approx(ref.high, abs=1e-12)


# -- the ROC band against scikit-learn's ROC of the same resamples ---------------------------------------------------


def test_roc_band_equals_an_independent_computation():
    pos, neg = _scores(3, m=12, n=15)
    y, s = np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]
    grid, lo, hi = roc_band(y, s, n_resamples=60, confidence=0.8, seed=5)
    rng = np.random.default_rng(5)
    curves = []
    for _ in range(60):
        p, n = rng.choice(pos, pos.size), rng.choice(neg, neg.size)
        fpr, tpr, _ = roc_curve(np.r_[np.ones(p.size), np.zeros(n.size)], np.r_[p, n], drop_intermediate=False)
        curves.append(np.interp(np.arange(101) / 100, fpr, tpr))
    np.testing.assert_allclose(grid, np.arange(101) / 100)
    np.testing.assert_allclose(lo, np.quantile(curves, 0.1, axis=0))
    np.testing.assert_allclose(hi, np.quantile(curves, 0.9, axis=0))


# -- thresholds ------------------------------------------------------------------------------------------------------


def test_sensitivity_threshold_inside_a_vertical_stretch_of_the_curve():
    # four positives above every negative: the ROC climbs straight up; 0.75 is reached at the third positive
    y, s = [1, 1, 1, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.2, 0.1]
    assert threshold_for_sensitivity(y, s, 0.75) == 0.7
    assert threshold_for_sensitivity(y, s, 1.0) == 0.6
    with pytest.raises(ValueError, match="min_sensitivity"):
        threshold_for_sensitivity(y, s, 1.5)


def test_predictions_are_integers_not_booleans():
    p = predict([0.2, 0.5, 0.9])
    assert p.dtype.kind == "i" and p.tolist() == [0, 1, 1]  # written to predictions.csv as 0/1, not True/False


def test_bad_labels_are_named_exactly():
    with pytest.raises(ValueError, match=r"got values \[2\]$"):
        binary_metrics([0, 1, 2], [0.1, 0.2, 0.3])


# -- calibration -----------------------------------------------------------------------------------------------------


def _ece_by_hand(y, s, n_bins):
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.minimum(np.digitize(s, edges[1:-1], right=False), n_bins - 1)
    return sum((idx == b).mean() * abs(y[idx == b].mean() - s[idx == b].mean()) for b in np.unique(idx))


def test_ece_matches_the_definition_at_every_bin_edge():
    rng = np.random.default_rng(6)
    s = np.r_[0.0, 0.05, 0.1, 0.95, 1.0, rng.uniform(0, 1, 200)]
    # over-confident scores: low bins under-predict, high bins over-predict (errors of both signs, so a single bin
    # or unweighted bins would give a different number)
    y = (rng.uniform(0, 1, s.size) < 0.5 + 0.3 * (s - 0.5)).astype(int)
    assert expected_calibration_error(y, s) > abs(y.mean() - s.mean()) + 0.05
    for n_bins in (10, 5, 3):
        assert expected_calibration_error(y, s, n_bins) == pytest.approx(_ece_by_hand(y, s, n_bins), abs=1e-12)
    # a score of exactly 1.0 is in the last bin, not dropped
    assert expected_calibration_error([0], [1.0]) == 1.0
    assert expected_calibration_error([1], [0.25]) == 0.75  # one image is enough
    assert math.isnan(expected_calibration_error([], []))


def test_reliability_curve_uses_the_requested_bins():
    rng = np.random.default_rng(7)
    s = rng.uniform(0, 1, 500)
    y = (rng.uniform(0, 1, 500) < s).astype(int)
    predicted, observed = reliability_curve(y, s, n_bins=10)
    ref_obs, ref_pred = calibration_curve(y, s, n_bins=10, strategy="uniform")
    assert predicted.size == 10
    np.testing.assert_allclose(predicted, ref_pred)
    np.testing.assert_allclose(observed, ref_obs)


def test_logit_of_integer_ends_is_finite():
    z = logit([0, 1])
    assert np.isfinite(z).all() and z[0] == pytest.approx(-z[1]) and z[1] > 15


def _nll(y, s, t):
    p = np.clip(1 / (1 + np.exp(-logit(s) / t)), 1e-7, 1 - 1e-7)  # as far from 0 and 1 as a float32 score
    return -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))


@pytest.mark.parametrize("stretch", [0.25, 3.0])
def test_temperature_is_the_nll_minimum_found_by_a_grid(stretch):
    # informative scores (their calibrated logit is about 2.1 z) made under-confident (best temperature about 0.12)
    # or over-confident (about 1.4)
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 400)
    z = (2 * y - 1) * 1.5 + rng.normal(0, 1.2, 400)
    s = 1 / (1 + np.exp(-z * stretch))
    t = fit_temperature(y, s)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 4000))
    best = grid[np.argmin([_nll(y, s, g) for g in grid])]
    assert t == pytest.approx(best, rel=0.01)
    assert (t < 0.5) if stretch < 1 else (t > 1)


def test_temperature_stops_at_twenty_for_scores_that_carry_nothing():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 300)
    s = np.where(rng.uniform(size=300) < 0.5, 0.999, 0.001)  # confident and unrelated to the labels
    assert fit_temperature(y, s) == pytest.approx(20.0, rel=1e-3)


def test_ece_keeps_neighbouring_bins_with_opposite_errors_apart():
    # bin 0 under-predicts, bin 1 over-predicts; bin 8 under-, bin 9 over-predicts: merging either pair would
    # cancel errors. ECE = 0.2 * (0.25 + 0.15 + 0.15 + 0.45) = 0.2 exactly
    s = [0.05] * 4 + [0.15] * 4 + [0.5] * 4 + [0.85] * 4 + [0.95] * 4
    y = [1, 0, 0, 0] + [0] * 4 + [1, 1, 0, 0] + [1] * 4 + [1, 1, 0, 0]
    # per bin: 0.05 vs 0.25 (+0.20), 0.15 vs 0 (-0.15), 0.5 vs 0.5 (0), 0.85 vs 1 (+0.15), 0.95 vs 0.5 (-0.45)
    assert expected_calibration_error(y, s) == pytest.approx(0.2 * (0.20 + 0.15 + 0 + 0.15 + 0.45))


def test_temperature_with_saturated_wrong_scores():
    # float32 softmax saturates at exactly 0 and 1; one such wrong score must cost at most -log(1e-7) at any
    # temperature (the clip), not infinity, or it would decide the temperature on its own
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 300)
    s = 1 / (1 + np.exp(-((2 * y - 1) * 1.5 + rng.normal(0, 1.2, 300)) * 0.25))  # under-confident: best T ~ 0.12
    y, s = np.r_[y, 0, 1], np.r_[s, 1.0, 0.0]
    t = fit_temperature(y, s)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 4000))
    best = grid[np.argmin([_nll(y, s, g) for g in grid])]
    assert t == pytest.approx(best, rel=0.01) and t < 0.3


def test_bootstrap_statistic_along_axis_zero():
    pos, neg = _scores(12)
    stacked = _metrics_from_split_scores(np.stack([pos, pos[::-1]], 1), np.stack([neg, neg], 1), 0.5, axis=0)
    single = _metrics_from_split_scores(pos, neg, 0.5)
    np.testing.assert_allclose(stacked, np.stack([single, single], 1))


# ---- faults no test caught before (issue: tests that can fail, part two) -------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bootstrap_intervals_are_computed_at_the_threshold_asked(dtype):
    """At a threshold below every positive score sensitivity is 1 in every resample: the interval is [1, 1]; at
    0.5 it is not. An interval computed at 0.5 whatever the threshold excludes its own point estimate."""
    from covidct.evaluation.metrics import binary_metrics
    from covidct.evaluation.summary import intervals

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    s = np.r_[rng.uniform(0.3, 0.9, 40), rng.uniform(0.1, 0.7, 40)].astype(dtype)
    low = intervals(y, s, 0.25, 500, 0)
    assert low["sensitivity"]["bootstrap"] == [1.0, 1.0]
    for t in (0.25, 0.5, 0.65):
        ci = intervals(y, s, t, 500, 0)
        point = binary_metrics(y, s, t)
        for name in ("sensitivity", "specificity", "accuracy"):
            lo, hi = ci[name]["bootstrap"]
            assert lo <= getattr(point, name) <= hi, (t, name)
    assert intervals(y, s, 0.5, 500, 0)["sensitivity"]["bootstrap"][0] < 1.0


@pytest.mark.parametrize("scores", [[0.5, 0.5, 0.5, 0.5], [0.2, 0.8, 0.2, 0.8]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_youden_threshold_is_finite_for_degenerate_scores(scores, dtype):
    """All-equal scores, or scores at chance (both classes the same): roc_curve's first threshold is inf and J ties
    at 0 there; the threshold returned is a real score."""
    from covidct.evaluation.metrics import youden_threshold

    t = youden_threshold([0, 1, 1, 0], np.asarray(scores, dtype=dtype))
    assert np.isfinite(t) and t in {float(np.float64(dtype(v))) for v in scores}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ece_and_the_reliability_diagram_put_a_score_on_a_bin_edge_in_the_same_bin(dtype):
    """Bins are closed on the left, [i/10, (i+1)/10), in both. 0.5 is exact in float32 and float64; the two bins
    around it have errors of opposite sign, so moving it across the edge changes the ECE (0.2 -> 0.533)."""
    from covidct.evaluation.calibration import expected_calibration_error, reliability_curve

    y = [1, 0, 1]
    s = np.asarray([0.5, 0.55, 0.45], dtype=dtype)
    assert expected_calibration_error(y, s) == pytest.approx(
        (2 / 3) * abs(0.5 - (0.5 + float(s[1])) / 2) + (1 / 3) * abs(1 - float(s[2])), abs=1e-6
    )
    assert expected_calibration_error(y, s) == pytest.approx(0.2, abs=1e-6)
    predicted, observed = reliability_curve(y, s)
    np.testing.assert_allclose(predicted, [float(s[2]), (0.5 + float(s[1])) / 2], atol=1e-6)
    np.testing.assert_allclose(observed, [1.0, 0.5])


def test_float32_scores_are_binned_and_thresholded_at_their_true_value():
    """float32(0.7) is 0.69999998...: it belongs below 0.7, in ECE bin 6 and under a threshold of 0.7, exactly
    as the float64 counts of metrics.json treat it (the evaluation passes float32 scores)."""
    from covidct.evaluation.calibration import expected_calibration_error
    from covidct.evaluation.metrics import binary_metrics, predict

    y = [1, 1, 1, 0]
    s = np.asarray([0.7, 0.7, 0.3, 0.69], dtype=np.float32)
    assert expected_calibration_error(y, s) == pytest.approx(0.1975, abs=1e-6)
    labels = predict(s, 0.7)
    assert labels.tolist() == [0, 0, 0, 0]
    m = binary_metrics(y, s, 0.7)
    assert (m.tp, m.fp) == (
        int(((labels == 1) & (np.array(y) == 1)).sum()),
        int(((labels == 1) & (np.array(y) == 0)).sum()),
    )
