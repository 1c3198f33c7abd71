"""The operating-point rules' registry (covidct.evaluation.rules): every path chooses through it, each registered rule
is one that a threshold record may name, and an unknown rule is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import ConfigError
from covidct.evaluation import rules
from covidct.evaluation.metrics import binary_metrics, bootstrap_youden_threshold, youden_threshold
from covidct.runs.operating_point import RULES as RECORDED_RULES


def test_every_registered_rule_can_be_recorded_and_chooses_on_the_scores():
    assert set(rules.RULES) | {"given"} == set(RECORDED_RULES)
    labels = np.r_[np.zeros(50), np.ones(50)]
    scores = np.r_[np.linspace(0.0, 0.6, 50), np.linspace(0.4, 1.0, 50)]
    youden = rules.choose_by_rule("youden", labels, scores)
    assert 0.35 <= youden <= 0.65
    sensitive = rules.choose_by_rule("sensitivity", labels, scores, 0.99)
    assert binary_metrics(labels, scores, sensitive).sensitivity >= 0.99 and sensitive <= youden
    assert 0.35 <= rules.choose_by_rule("youden-bootstrap", labels, scores) <= 0.65


def test_a_rule_registered_is_chosen_through_the_one_function_and_an_unknown_one_refused(monkeypatch):
    monkeypatch.setitem(rules.RULES, "half", rules.ThresholdRule("half", "0.5", lambda y, s, m: 0.5))
    assert rules.choose_by_rule("half", [0, 1], [0.2, 0.8]) == 0.5
    with pytest.raises(ConfigError, match="unknown operating-point rule 'best'"):
        rules.choose_by_rule("best", [0, 1], [0.2, 0.8])


def test_the_bootstrapped_youden_threshold_is_seeded_and_separates_separable_scores():
    labels = np.r_[np.zeros(30), np.ones(30)]
    scores = np.r_[np.linspace(0.05, 0.45, 30), np.linspace(0.55, 0.95, 30)]
    t = bootstrap_youden_threshold(labels, scores, 50, seed=0)
    assert binary_metrics(labels, scores, t).accuracy == 1.0


def test_the_bootstrapped_youden_threshold_moves_less_between_small_validation_splits_than_one_pick():
    """Why it is the default: drawn again and again, 60 overlapping scores give Youden picks that scatter; their
    bootstrap median scatters less (ACCURACY.md measures it on real validation splits)."""
    rng = np.random.default_rng(0)
    picks, medians = [], []
    for _ in range(40):
        labels = np.r_[np.zeros(30), np.ones(30)]
        scores = 1 / (1 + np.exp(-np.r_[rng.normal(-0.6, 1, 30), rng.normal(0.6, 1, 30)]))
        picks.append(youden_threshold(labels, scores))
        medians.append(bootstrap_youden_threshold(labels, scores, 100, seed=0))
    assert np.std(medians) < np.std(picks)  # 0.076 against 0.084 here


def test_the_bootstrapped_youden_threshold_is_the_median_of_seeded_stratified_resamples():
    """Against the method written out here (numpy's generator, each class resampled to its own size): the seed
    decides the draws, and both classes are drawn whole, not one image of one of them."""
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(40), np.ones(40)]
    scores = 1 / (1 + np.exp(-np.r_[rng.normal(-0.5, 1, 40), rng.normal(0.5, 1, 40)]))
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    for seed in (0, 1):
        draw = np.random.default_rng(seed)
        picks = []
        for _ in range(60):
            k = np.r_[draw.choice(positives, 40), draw.choice(negatives, 40)]
            picks.append(youden_threshold(labels[k], scores[k]))
        assert bootstrap_youden_threshold(labels, scores, 60, seed) == np.median(picks)
    assert bootstrap_youden_threshold(labels, scores, 60, 0) != bootstrap_youden_threshold(labels, scores, 60, 1)
    assert rules.choose_by_rule("youden-bootstrap", labels, scores) == bootstrap_youden_threshold(
        labels, scores, rules.BOOTSTRAP_DRAWS, 0
    )
