from pathlib import Path

import numpy as np
import pytest

from covidct.data import Sample
from covidct.errors import DataError
from covidct.evaluation.patients import group_metrics, group_scores


def _set(groups: dict[str, list[tuple[int, float]]], source: str = "hospital"):
    samples, labels, scores = [], [], []
    for g, slices in groups.items():
        for i, (y, s) in enumerate(slices):
            samples.append(Sample(Path(f"/x/{g or 'loose'}/{i}.dcm"), y, source, g))
            labels.append(y)
            scores.append(s)
    return samples, np.array(labels), np.array(scores)


def test_a_group_is_scored_by_its_top_slices_and_is_covid_if_any_slice_is():
    slices = [(1, 0.1)] * 18 + [(1, 0.9), (1, 0.7)]  # a COVID patient: 2 abnormal slices of 20
    samples, labels, scores = _set({"p1": slices, "p2": [(0, 0.3), (0, 0.2)], "": [(0, 0.6)]})
    rows = {r["group"]: r for r in group_scores(samples, labels, scores, "top10_mean")}
    assert rows["p1"]["score"] == pytest.approx(0.8) and rows["p1"]["label"] == 1 and rows["p1"]["slices"] == 20
    assert rows["p2"]["score"] == pytest.approx(0.3)  # top 10% of 2 slices: the highest one
    assert rows["/x/loose/0.dcm"]["slices"] == 1  # an image without a group stands alone
    mean = {r["group"]: r["score"] for r in group_scores(samples, labels, scores, "mean")}
    assert mean["p1"] == pytest.approx(np.mean([s for _, s in slices]))
    mixed = _set({"p3": [(0, 0.2), (1, 0.8)]})
    (row,) = group_scores(*mixed, "max")
    assert row["label"] == 1 and row["mixed_labels"]


def test_patient_level_figures_from_noisy_slices():
    """Slices of COVID patients that look normal drag the slice AUC down; per patient, a few abnormal slices decide."""
    rng = np.random.default_rng(0)
    groups = {}
    for p in range(6):  # COVID patients: 3 abnormal slices of 30, the rest like the non-COVID ones
        groups[f"c{p}"] = [(1, float(s)) for s in rng.uniform(0.0, 0.6, 27)] + [(1, 0.9)] * 3
    for p in range(6):
        groups[f"n{p}"] = [(0, float(s)) for s in rng.uniform(0.0, 0.6, 30)]
    samples, labels, scores = _set(groups)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels, scores) < 0.65
    m = group_metrics(samples, labels, scores, 0.7, "top10_mean")
    assert m["groups"] == 12 and m["n"] == 12 and m["auc"] == pytest.approx(1.0)
    assert m["tp"] == 6 and m["tn"] == 6 and m["sensitivity"] == 1.0
    assert m["slices_per_group"] == {"min": 30, "median": 30.0, "max": 30} and m["ungrouped_images"] == 0
    assert len(m["auc_delong"]) == 2 and "top-k" in m["rule"]
    # one class only (allowed for an external set): no AUC interval, sensitivity still reported
    only = _set({k: v for k, v in groups.items() if k.startswith("c")})
    one = group_metrics(*only, 0.7, "top10_mean")
    assert "auc_delong" not in one and one["sensitivity"] == 1.0


def test_a_set_without_groups_or_an_unknown_aggregation_is_a_clear_error():
    samples, labels, scores = _set({"": [(0, 0.1), (1, 0.9)]})
    with pytest.raises(DataError, match="no groups in this set"):
        group_metrics(samples, labels, scores, 0.5, "top10_mean")
    grouped = _set({"p": [(0, 0.1)]})
    with pytest.raises(DataError, match="aggregation must be one of"):
        group_scores(*grouped, "p95")


def test_only_slices_in_lung_count_where_hu_says_which_as_covidct_predict_scores_a_volume():
    """An abdomen slice (no lung in its HU mask) with a high score does not make a patient positive; a group
    without HU (images) or without any slice in lung counts all its slices."""
    samples, labels, scores = _set({"p1": [(0, 0.2)] * 9 + [(0, 0.95)], "p2": [(0, 0.3), (0, 0.9)]})
    fractions = [0.3] * 9 + [0.0] + [None, None]  # p1: DICOM, its last slice below the lung; p2: images
    rows = {r["group"]: r for r in group_scores(samples, labels, scores, "max", fractions)}
    assert rows["p1"]["score"] == pytest.approx(0.2) and rows["p1"]["slices_counted"] == 9
    assert rows["p2"]["score"] == pytest.approx(0.9) and rows["p2"]["slices_counted"] == 2
    assert "in lung" in rows["p1"]["counted"] and "no HU" in rows["p2"]["counted"]
    plain = {r["group"]: r["score"] for r in group_scores(samples, labels, scores, "max")}
    assert plain["p1"] == pytest.approx(0.95)  # without the lung fractions every slice counts
    m = group_metrics(samples, labels, scores, 0.5, "max", fractions)
    assert sum(m["groups_by_counting_rule"].values()) == 2 and m["fp"] == 1  # p2 only
