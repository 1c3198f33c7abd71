"""Calibration of binary scores: expected calibration error, reliability curve, temperature scaling.

Pure functions. Scores are probabilities of the positive class. For a 2-class softmax, temperature scaling is
p' = sigmoid(logit(p) / T); it changes no ranking (AUC) and no decision at 0.5, only how far the probabilities
are from the observed frequencies.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar

from covidct.evaluation.metrics import label_score_arrays

_EPS = 1e-7


def expected_calibration_error(labels: ArrayLike, scores: ArrayLike, n_bins: int = 10) -> float:
    """Sum over equal-width score bins of (bin share) x |observed positive rate - mean score|."""
    y, s = label_score_arrays(labels, scores)
    if y.size == 0:
        return math.nan
    bins = score_bins(s, n_bins)
    ece = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            ece += inside.mean() * abs(y[inside].mean() - s[inside].mean())
    return float(ece)


def score_bins(s: np.ndarray, n_bins: int) -> np.ndarray:
    """The bin of each score: bin i holds [i/n, (i+1)/n), closed on the left; 1.0 goes to the last."""
    return np.clip((s * n_bins).astype(int), 0, n_bins - 1)


def reliability_curve(labels: ArrayLike, scores: ArrayLike, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(mean score, observed positive rate) per non-empty equal-width bin, binned exactly as the ECE is.

    Not scikit-learn's calibration_curve: it puts a score on a bin edge in the lower bin (closed on the right), the
    ECE in the upper one, so the diagram and the number disagreed for such scores."""
    y, s = label_score_arrays(labels, scores)
    bins = score_bins(s, n_bins)
    used = [b for b in range(n_bins) if (bins == b).any()]
    predicted = np.array([s[bins == b].mean() for b in used])
    observed = np.array([y[bins == b].mean() for b in used])
    return predicted, observed


def logit(p: ArrayLike) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(scores: ArrayLike, temperature: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logit(scores) / temperature))


def fit_temperature(labels: ArrayLike, scores: ArrayLike) -> float:
    """The temperature minimising the negative log-likelihood of `labels` (fit it on validation scores)."""
    y, s = label_score_arrays(labels, scores)
    z = logit(s)

    def nll(log_t: float) -> float:
        p = np.clip(1.0 / (1.0 + np.exp(-z / math.exp(log_t))), _EPS, 1 - _EPS)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))

    result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(result.x))
