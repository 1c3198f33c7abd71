import numpy as np
import pytest

from covidct.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    logit,
    reliability_curve,
)
from covidct.evaluation.metrics import binary_metrics


def test_ece_hand_case():
    # bin [0.2,0.3): scores .2 .2, labels 0 1 -> |0.5 - 0.2| = 0.3, share 2/4
    # bin [0.9,1.0]: scores .9 1.0, labels 1 1 -> |1 - 0.95| = 0.05, share 2/4
    assert expected_calibration_error([0, 1, 1, 1], [0.2, 0.2, 0.9, 1.0]) == pytest.approx(0.5 * 0.3 + 0.5 * 0.05)


def test_perfectly_calibrated_scores_have_small_ece():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.02
    mean_score, observed = reliability_curve(y, p)
    assert np.allclose(mean_score, observed, atol=0.05)


def _overconfident(seed=0, n=4000, true_t=3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    y = (rng.uniform(0, 1, n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 1 / (1 + np.exp(-z * true_t))  # logits stretched by 3: overconfident


def test_temperature_recovers_the_stretch_and_lowers_ece():
    y, s = _overconfident()
    t = fit_temperature(y, s)
    assert t == pytest.approx(3.0, rel=0.15)
    calibrated = apply_temperature(s, t)
    assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, s) / 2
    # ranking and decisions at 0.5 are unchanged
    a, b = binary_metrics(y, s), binary_metrics(y, calibrated)
    assert a.auc == pytest.approx(b.auc) and (a.tp, a.fp) == (b.tp, b.fp)


def test_logit_is_finite_at_the_ends():
    assert np.isfinite(logit([0.0, 1.0])).all()


def test_logit_of_float32_scores_is_computed_in_float64():
    """The network's scores arrive as float32: a score of 1.0 is clipped to 1 - 1e-7 in float64 (logit 16.118);
    clipped in float32, 1 - 1e-7 rounds to 0.99999988 and the logit moves to about 15.94."""
    z = logit(np.array([0.0, 0.3, 1.0], dtype=np.float32))
    assert z.dtype == np.float64
    assert z[2] == pytest.approx(np.log((1 - 1e-7) / 1e-7), rel=1e-9)
    assert z[0] == pytest.approx(-np.log((1 - 1e-7) / 1e-7), rel=1e-9)
    assert z[1] == pytest.approx(np.log(np.float64(np.float32(0.3)) / (1 - np.float64(np.float32(0.3)))), rel=1e-9)
