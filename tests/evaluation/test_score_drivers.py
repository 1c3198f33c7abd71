"""What a model's scores follow: rank correlations with image statistics, and each statistic's own class AUC."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from covidct.evaluation.score_drivers import driver_warnings, drivers_text, score_drivers


def test_the_statistic_the_scores_are_made_of_is_the_strongest_driver():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    height = rng.normal(300, 40, 100)
    noise = rng.normal(0, 1, 100)
    scores = 1 / (1 + np.exp(-(height - 300) / 40))  # a model that reads the image height, not the class
    d = score_drivers(labels, scores, {"height": height, "mean_grey": noise})
    assert d["strongest"] == "height"
    assert d["statistics"]["height"]["spearman"] == pytest.approx(1.0)
    assert abs(d["statistics"]["mean_grey"]["spearman"]) < 0.3
    assert d["statistics"]["height"]["class_auc"] == pytest.approx(roc_auc_score(labels, height))
    line = drivers_text(d)
    assert "height" in line and "+1.00" in line


def test_a_negative_driver_keeps_its_sign_and_outranks_a_weaker_positive_one():
    labels = np.array([0, 1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    d = score_drivers(labels, scores, {"dark_share": -scores, "width": np.array([1, 3, 2, 5, 4, 6.0])})
    assert d["strongest"] == "dark_share" and d["statistics"]["dark_share"]["spearman"] == pytest.approx(-1.0)
    assert "-1.00" in drivers_text(d)


def test_constant_values_one_class_and_mismatched_lengths():
    d = score_drivers(np.ones(4), np.array([0.1, 0.2, 0.3, 0.4]), {"file_kb": np.full(4, 7.0)})
    assert d["statistics"]["file_kb"] == {"spearman": None, "class_auc": None} and d["strongest"] is None
    assert "none of the image statistics" in drivers_text(d)
    one_class = score_drivers(np.ones(4), np.array([0.1, 0.2, 0.3, 0.4]), {"w": np.arange(4.0)})
    assert one_class["statistics"]["w"]["class_auc"] is None and "one class" in drivers_text(one_class)
    with pytest.raises(ValueError, match="statistic 'w' has 3 values for 4 scores"):
        score_drivers(np.ones(4), np.zeros(4), {"w": np.arange(3.0)})


def test_scores_that_follow_a_file_statistic_are_warned_about_and_content_statistics_are_not():
    labels = np.repeat([0, 1], 5)
    scores = np.linspace(0, 1, 10)
    d = score_drivers(labels, scores, {"height": scores * 100, "mean_grey": scores, "file_kb": -scores})
    warned = driver_warnings(d)
    assert len(warned) == 2 and "height (Spearman +1.00)" in warned[0] and "file_kb (Spearman -1.00)" in warned[1]
    weak = score_drivers(labels, scores, {"width": np.array([5, 1, 4, 2, 3, 3, 2, 4, 1, 5.0])})
    assert abs(weak["statistics"]["width"]["spearman"]) < 0.5 and driver_warnings(weak) == []
    assert driver_warnings(d, warn_rho=1.01) == []
