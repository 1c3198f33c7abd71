"""The learning curve's draws and numbers, on synthetic features (no model): groups never straddle the fitted and
the scored part, a seed repeats a curve, and the refusals name what is wrong."""

import numpy as np
import pytest

from covidct.adaptation.curve import CurvePlan, draw_groups, head_adapter, learning_curve, summarise_curve
from covidct.adaptation.site import absolute_spec
from covidct.errors import DataError
from covidct.models.head import fit_head, head_scores


def site(n_groups: int = 8, per_group: int = 5, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(2 * n_groups), per_group)
    labels = (groups >= n_groups).astype(int)
    centre = rng.normal(size=(2 * n_groups, dim))  # each group (patient) its own look, the class a small shift
    x = centre[groups] + rng.normal(size=(len(groups), dim)) * 0.5 + labels[:, None] * 0.8
    return x, labels, groups


def test_draws_take_whole_groups_k_per_class_and_leave_the_rest():
    _, labels, groups = site()
    for k in (1, 3, 7):
        fit = draw_groups(labels, groups, k, np.random.default_rng(k))
        assert not set(groups[fit]) & set(groups[~fit])  # no group on both sides
        assert [len(set(groups[fit & (labels == c)])) for c in (0, 1)] == [k, k]
    with pytest.raises(DataError, match="k = 8 groups per class asked, but class 0 has 8 group"):
        draw_groups(labels, groups, 8, np.random.default_rng(0))


def test_a_seed_repeats_a_curve_exactly_and_another_seed_draws_otherwise():
    x, labels, groups = site()
    zero = np.random.default_rng(1).random(len(labels))
    features = {"head": head_adapter(x, labels), "imagenet-head": head_adapter(x[:, ::-1] * 2, labels)}
    a = learning_curve(features, zero, labels, groups, CurvePlan((1, 3), draws=3, seed=5))
    b = learning_curve(features, zero, labels, groups, CurvePlan((1, 3), draws=3, seed=5))
    c = learning_curve(features, zero, labels, groups, CurvePlan((1, 3), draws=3, seed=6))
    assert a == b and a != c
    assert {r["strategy"] for r in a} == {"zero-shot", "head", "imagenet-head"}
    assert all(r["groups_scored"] == 16 - 2 * r["k"] for r in a)


def test_the_head_learns_the_site_and_the_curve_rises_with_k():
    x, labels, groups = site(n_groups=20, seed=2)
    zero = np.full(len(labels), 0.5) + np.random.default_rng(0).normal(0, 0.01, len(labels))
    adapters = {"head": head_adapter(x, labels)}
    summary = summarise_curve(learning_curve(adapters, zero, labels, groups, CurvePlan((1, 10), draws=5, seed=0)))
    head = {r["k"]: r for r in summary if r["strategy"] == "head"}
    assert head[10]["auc"] > head[1]["auc"] and head[10]["auc"] >= 0.85
    assert abs(next(r for r in summary if r["strategy"] == "zero-shot" and r["k"] == 10)["auc"] - 0.5) < 0.15
    lo, hi = head[10]["auc_ci"]
    assert lo <= head[10]["auc"] <= hi and head[10]["auc_worst"] <= head[10]["auc"]


def test_the_folded_head_gives_scikit_learns_probabilities():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, labels, _ = site()
    w, b = fit_head(x, labels, c=0.1)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(x, labels)
    np.testing.assert_allclose(head_scores(w, b, x), pipe.predict_proba(x)[:, 1], atol=1e-4)


def test_the_site_is_recorded_so_that_it_is_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_spec("site=data/site.csv") == f"site={tmp_path / 'data' / 'site.csv'}"
    assert absolute_spec("data/site.csv") == f"site={tmp_path / 'data' / 'site.csv'}"  # a CSV's name is its stem
    assert absolute_spec("sars-cov-2-ct") == "sars-cov-2-ct"  # a known source: found by its name


def test_the_curve_interval_of_bounded_values_stays_inside_them():
    from covidct.adaptation.curve import mean_interval
    from covidct.fileio.tables import interval_text

    aucs = np.array([1.0, 1.0, 1.0, 0.62, 1.0])  # a t-interval of these passes 1: [0.57, 1.12]
    lo, hi = mean_interval(aucs)
    assert 0.62 <= lo < hi <= 1.0
    assert mean_interval(np.array([0.8, 0.8])) == [0.8, 0.8]
    assert interval_text(mean_interval(np.array([0.7]))) == "[no interval: too few cases]"
    assert "nan" not in interval_text([float("nan"), float("nan")])
