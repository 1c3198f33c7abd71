import math

import numpy as np
import pytest

from covidct.evaluation.metrics import binary_metrics, confusion_counts, predict, roc_auc


def test_hand_computed_case():
    # labels:      1    1    1    0    0    0    0
    # scores:     .9   .6   .3   .8   .4   .2   .1   -> at 0.5: TP=2 FN=1 FP=1 TN=3
    labels = [1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.6, 0.3, 0.8, 0.4, 0.2, 0.1]
    m = binary_metrics(labels, scores, 0.5)
    assert (m.tp, m.fn, m.fp, m.tn) == (2, 1, 1, 3)
    assert m.accuracy == pytest.approx(5 / 7)
    assert m.sensitivity == pytest.approx(2 / 3)
    assert m.specificity == pytest.approx(3 / 4)
    assert m.precision == pytest.approx(2 / 3)
    assert m.npv == pytest.approx(3 / 4)
    assert m.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # AUC = P(score of a positive > score of a negative): positives .9 .6 .3 vs negatives .8 .4 .2 .1
    # .9 beats 4, .6 beats 3, .3 beats 2 -> 9 of 12 pairs
    assert m.auc == pytest.approx(9 / 12)
    assert m.n == 7 and m.threshold == 0.5


def test_ties_count_half_in_auc():
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([0, 0, 1], [0.2, 0.7, 0.7]) == pytest.approx(0.75)


def test_threshold_is_inclusive():
    assert predict([0.49, 0.5, 0.51], 0.5).tolist() == [0, 1, 1]
    m = binary_metrics([1, 0], [0.7, 0.7], threshold=0.7)
    assert (m.tp, m.fp) == (1, 1)


def test_one_class_absent_gives_nan_not_fake_numbers():
    m = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])  # no positives at all
    assert math.isnan(m.sensitivity)
    assert math.isnan(m.auc)
    assert m.specificity == pytest.approx(2 / 3)
    assert m.fp == 1 and m.tp == 0 and m.fn == 0
    m = binary_metrics([1, 1], [0.9, 0.2])  # no negatives
    assert math.isnan(m.specificity)
    assert m.npv == 0.0  # the one negative prediction is wrong
    assert m.sensitivity == 0.5


def test_all_predictions_one_class():
    labels = [1, 0, 1, 0, 0]
    m = binary_metrics(labels, [0.1] * 5)  # everything predicted negative
    assert (m.tp, m.fp, m.tn, m.fn) == (0, 0, 3, 2)
    assert m.sensitivity == 0 and m.specificity == 1
    assert math.isnan(m.precision)  # no positive predictions: PPV undefined
    assert m.auc == 0.5  # constant scores carry no ranking
    m = binary_metrics(labels, [0.9] * 5)
    assert m.sensitivity == 1 and m.specificity == 0 and m.precision == pytest.approx(2 / 5)


def test_perfect_and_inverted_ranking():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_confusion_counts_sum_to_n():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    assert sum(confusion_counts(y, p)) == 50


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="differ in length"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics([0, 2], [0.5, 0.5])


def test_youden_threshold_hand_case():
    from covidct.evaluation.metrics import youden_threshold

    # at 0.6: sens 2/3, spec 3/4 -> J = 0.417; at 0.3: sens 1, spec 2/4 -> J = 0.5; at 0.8: 1/3 + 3/4 ... = 0.083
    labels = [1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.6, 0.3, 0.8, 0.4, 0.2, 0.1]
    t = youden_threshold(labels, scores)
    assert t == pytest.approx(0.3)
    m = binary_metrics(labels, scores, t)
    assert m.sensitivity + m.specificity - 1 == pytest.approx(0.5)


def test_threshold_for_sensitivity():
    from covidct.evaluation.metrics import threshold_for_sensitivity

    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.5, 0.2, 0.7, 0.3, 0.1, 0.05]
    assert threshold_for_sensitivity(labels, scores, 0.75) == pytest.approx(0.5)
    assert threshold_for_sensitivity(labels, scores, 1.0) == pytest.approx(0.2)
    assert binary_metrics(labels, scores, 0.2).sensitivity == 1.0
    with pytest.raises(ValueError, match="min_sensitivity"):
        threshold_for_sensitivity(labels, scores, 0)


def test_summarise_is_pure_numbers_without_a_model():
    """evaluate's middle stage: metrics.json's content from scores alone (no model, no files)."""
    from pathlib import Path

    from covidct.data.datasets import Sample
    from covidct.evaluation.scoring import Scored
    from covidct.evaluation.summary import summarise_scores

    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.4, 0.3, 0.6, 0.1, 0.7, 0.2])
    samples = [Sample(Path(f"{i}.png"), int(v), "a" if i < 4 else "b") for i, v in enumerate(y)]
    scored = Scored(
        runs=[Path("run")],
        split="test",
        paths=[str(x.path) for x in samples],
        labels=y,
        scores=s,
        samples=samples,
        val_paths=None,
        val_labels=y,
        val_scores=s,
        threshold=0.5,
        class_names=["NonCOVID", "COVID"],
        architectures=["m"],
        epochs=[3],
        checkpoint="best.ckpt",
    )
    r = summarise_scores(scored, n_bootstrap=0)
    assert (r["tp"], r["tn"], r["fp"], r["fn"]) == (3, 3, 1, 1) and r["epoch"] == 3 and r["model"] == "m"
    assert [p["name"] for p in r["operating_points"]] == ["default", "youden", "sensitivity>=0.95"]
    assert set(r["per_source"]) == {"a", "b"} and r["per_source"]["a"]["n"] == 4
    assert r["ci95"]["auc"]["delong"][0] < r["auc"] < r["ci95"]["auc"]["delong"][1]
