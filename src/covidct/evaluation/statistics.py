"""Uncertainty for binary-classifier metrics: Wilson intervals, stratified bootstrap, DeLong for ROC-AUC.

Pure functions: arrays in, numbers out. The bootstrap is scipy's (`scipy.stats.bootstrap`); stratification comes
from passing the positive and the negative scores as two samples, which scipy resamples independently, so every
resample keeps the class counts of the original. DeLong's variance uses the fast algorithm of Sun & Xu (2014).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from covidct.evaluation.metrics import label_score_arrays
from covidct.verdict import positive

BOOTSTRAP_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "auc")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion; (nan, nan) when there are no trials."""
    if trials == 0:
        return Interval(math.nan, math.nan)
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(float(ci.low), float(ci.high))


def _metrics_from_split_scores(pos: np.ndarray, neg: np.ndarray, threshold: float, axis: int = -1) -> np.ndarray:
    """All BOOTSTRAP_METRICS from the scores of positives and negatives (vectorised over leading axes)."""
    tp = positive(pos, threshold).sum(axis=axis).astype(float)
    fn = pos.shape[axis] - tp
    tn = (~positive(neg, threshold)).sum(axis=axis).astype(float)
    fp = neg.shape[axis] - tn
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (tp + tn) / (tp + tn + fp + fn)
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
        ppv = tp / (tp + fp)
        npv = tn / (tn + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    auc = _auc_mann_whitney(pos, neg, axis)
    return np.stack([acc, sens, spec, ppv, npv, f1, auc])


def _auc_mann_whitney(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(score of a positive > score of a negative) + 0.5 P(tie), vectorised over leading axes."""
    pos = np.moveaxis(pos, axis, -1)
    neg = np.moveaxis(neg, axis, -1)
    greater = (pos[..., :, None] > neg[..., None, :]).mean(axis=(-1, -2))
    ties = (pos[..., :, None] == neg[..., None, :]).mean(axis=(-1, -2))
    return greater + 0.5 * ties


def bootstrap_intervals(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float = 0.5,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Stratified percentile-bootstrap intervals of every metric in BOOTSTRAP_METRICS."""
    y, s = label_score_arrays(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) < 2 or len(neg) < 2:
        return {m: Interval(math.nan, math.nan) for m in BOOTSTRAP_METRICS}
    with warnings.catch_warnings():  # all-equal resamples (tiny or perfectly separated data) are fine here
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = _bootstrap(pos, neg, threshold, n_resamples, confidence, seed)
    lows, highs = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
    return {m: Interval(float(lo), float(hi)) for m, lo, hi in zip(BOOTSTRAP_METRICS, lows, highs)}


def _bootstrap(pos: np.ndarray, neg: np.ndarray, threshold: float, n: int, confidence: float, seed: int) -> Any:
    return stats.bootstrap(
        (pos, neg),
        lambda p, n, axis=-1: _metrics_from_split_scores(p, n, threshold, axis),
        n_resamples=n,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        batch=100,  # bounds memory: the AUC compares every positive with every negative
        rng=np.random.default_rng(seed),
    )


def _midranks(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average")


def _delong_components(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and the structural components V10 (per positive) and V01 (per negative) of DeLong et al. (1988)."""
    m, n = len(pos), len(neg)
    tx, ty = _midranks(pos), _midranks(neg)
    tz = _midranks(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return float(auc), v10, v01


def delong_interval(labels: ArrayLike, scores: ArrayLike, confidence: float = 0.95) -> tuple[float, float, Interval]:
    """(AUC, its DeLong standard error, a normal-approximation interval clipped to [0, 1])."""
    y, s = label_score_arrays(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) < 2 or len(neg) < 2:
        return math.nan, math.nan, Interval(math.nan, math.nan)
    auc, v10, v01 = _delong_components(pos, neg)
    se = math.sqrt(np.var(v10, ddof=1) / len(pos) + np.var(v01, ddof=1) / len(neg))
    z = stats.norm.ppf(0.5 + confidence / 2)
    return auc, se, Interval(max(0.0, auc - z * se), min(1.0, auc + z * se))


@dataclass(frozen=True)
class PairedAUCTest:
    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    se: float
    interval: Interval
    p_value: float  # two-sided, H0: equal AUC


def delong_paired_test(
    labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, confidence: float = 0.95
) -> PairedAUCTest:
    """DeLong's test for the difference of two correlated AUCs (two models scored on the same images)."""
    y, a = label_score_arrays(labels, scores_a)
    _, b = label_score_arrays(labels, scores_b)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m < 2 or n < 2:
        nan = math.nan
        return PairedAUCTest(nan, nan, nan, nan, Interval(nan, nan), nan)
    auc_a, v10a, v01a = _delong_components(a[y == 1], a[y == 0])
    auc_b, v10b, v01b = _delong_components(b[y == 1], b[y == 0])
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = auc_a - auc_b
    se = math.sqrt(max(var, 0.0))
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = 2 * stats.norm.sf(abs(diff) / se) if se > 0 else (1.0 if diff == 0 else 0.0)
    return PairedAUCTest(auc_a, auc_b, diff, se, Interval(diff - z * se, diff + z * se), float(p))


def roc_band(
    labels: ArrayLike, scores: ArrayLike, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pointwise stratified-bootstrap band of the ROC curve: (fpr grid, tpr low, tpr high)."""
    y, s = label_score_arrays(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    grid = np.linspace(0, 1, 101)
    if len(pos) < 2 or len(neg) < 2:
        return grid, np.full_like(grid, np.nan), np.full_like(grid, np.nan)
    rng = np.random.default_rng(seed)
    curves = np.empty((n_resamples, grid.size))
    for i in range(n_resamples):
        p = rng.choice(pos, pos.size)
        n = rng.choice(neg, neg.size)
        thresholds = np.unique(np.r_[p, n, np.inf])[::-1]
        tpr = positive(p[None, :], thresholds[:, None]).mean(1)
        fpr = positive(n[None, :], thresholds[:, None]).mean(1)
        curves[i] = np.interp(grid, fpr, tpr)
    alpha = (1 - confidence) / 2
    return grid, np.quantile(curves, alpha, axis=0), np.quantile(curves, 1 - alpha, axis=0)
