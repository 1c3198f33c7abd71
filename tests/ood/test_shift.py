"""The batch shift test (covidct.ood.shift): calibrated under no shift, its power growing with the batch size, and its
reference stored with the detector without pickle, a damaged one refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import kstest

from covidct.errors import ModelError
from covidct.ood.fit import DetectorRecipe, fit_detector
from covidct.ood.shift import ShiftReference, mmd_test, shift_test
from covidct.ood.storage import load_detector, save_detector

D, S = 40, 6


def draw(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Features and image statistics of n images; `shift` moves both, in units of their spread."""
    mixing = np.random.default_rng(99).normal(size=(8, D))  # features on a low-dimensional subspace, as a network's
    features = rng.normal(size=(n, 8)) @ mixing + 0.3 * rng.normal(size=(n, D)) + shift
    statistics = rng.normal(size=(n, S)) + shift
    return features, statistics


BASIS = draw(np.random.default_rng(7), 200)[0]  # the training images' features: the axes, never the reference's


def test_p_values_are_uniform_under_no_shift():
    rng = np.random.default_rng(0)
    p_mmd = [mmd_test(rng.normal(size=(60, 5)), rng.normal(size=(30, 5)), 200, seed)["p_value"] for seed in range(150)]
    assert kstest(p_mmd, "uniform").pvalue > 0.01
    assert 0.0 <= np.mean(np.array(p_mmd) < 0.05) <= 0.10


def test_false_alarms_at_alpha_under_no_shift():
    rng = np.random.default_rng(1)
    flagged = []
    for d in range(60):
        f, s = draw(rng, 110)
        reference = ShiftReference.fit(f[:60], s[:60], BASIS)
        flagged.append(shift_test(reference, f[60:], s[60:], permutations=200, seed=d)["shifted"])
    assert np.mean(flagged) <= 0.12  # alpha 0.05 after Bonferroni; 60 draws: a binomial's spread


def test_power_grows_with_the_batch_size():
    rng = np.random.default_rng(2)
    f, s = draw(rng, 120)
    reference = ShiftReference.fit(f, s, BASIS)
    power = {}
    for n in (10, 50):
        hits = []
        for d in range(20):
            bf, bs = draw(rng, n, shift=0.5)
            hits.append(shift_test(reference, bf, bs, permutations=200, seed=d)["shifted"])
        power[n] = np.mean(hits)
    assert power[10] < power[50] and power[50] >= 0.9


def test_the_record_names_its_tests_and_correction():
    rng = np.random.default_rng(3)
    f, s = draw(rng, 80)
    record = shift_test(ShiftReference.fit(f[:60], s[:60], BASIS), f[60:], s[60:], permutations=100)
    assert set(record["tests"]) == {"features_mmd", "statistics_mmd", "classifier"}
    assert record["n"] == 20 and record["reference_n"] == 60 and record["alpha"] == 0.05
    assert record["p_value"] == min(1.0, 3 * min(t["p_value"] for t in record["tests"].values()))
    with pytest.raises(ModelError, match="at least 10 images"):
        shift_test(ShiftReference.fit(f[:60], s[:60], BASIS), f[:5], s[:5])


@pytest.fixture
def detector_with_reference(tmp_path):
    rng = np.random.default_rng(4)
    train, val = rng.normal(size=(50, D)), rng.normal(size=(30, D))
    detector = fit_detector(train, val, "timm:resnet10t", DetectorRecipe("mahalanobis", 95.0))
    f, s = draw(rng, 30)
    detector.reference = ShiftReference.fit(f, s, BASIS, {"images": "validation split"})
    save_detector(detector, tmp_path)
    return tmp_path, detector


def test_the_reference_travels_with_the_detector_without_pickle(detector_with_reference):
    folder, detector = detector_with_reference
    loaded = load_detector(folder)
    for name in ("mean", "axes", "features", "statistics"):
        np.testing.assert_allclose(getattr(loaded.reference, name), getattr(detector.reference, name), atol=1e-5)
    assert json.loads((folder / "ood.json").read_text())["shift"]["images"] == "validation split"
    assert b"pickle" not in (folder / "ood.safetensors").read_bytes()[:2000]


def test_a_damaged_reference_is_refused_by_name(detector_with_reference):
    from safetensors.numpy import load_file, save_file

    folder, _ = detector_with_reference
    arrays = load_file(str(folder / "ood.safetensors"))
    arrays["shift.features"] = np.full_like(arrays["shift.features"], np.nan)
    save_file(arrays, str(folder / "ood.safetensors"))
    with pytest.raises(ModelError, match=r"ood\.json: the shift reference is damaged.*covidct ood fit"):
        load_detector(folder)
    del arrays["shift.features"]
    save_file(arrays, str(folder / "ood.safetensors"))
    with pytest.raises(ModelError, match=r"shift reference lacks \['features'\]"):
        load_detector(folder)


def test_a_large_batch_is_tested_on_a_bounded_draw():
    rng = np.random.default_rng(5)
    f, s = draw(rng, 660)
    record = shift_test(ShiftReference.fit(f[:60], s[:60], BASIS), f[60:], s[60:], permutations=50)
    assert record["n"] == 600 and record["n_tested"] == 500


def test_a_batch_not_flagged_is_told_what_it_can_still_hide():
    from covidct.ood.shift import MEASURED_POWER, measured_power, shift_text

    assert measured_power(60) == {shift: by_size.get(50) for shift, by_size in MEASURED_POWER.items()}
    small = measured_power(10)
    assert list(small.values()) == [0.99, None]  # nothing measured below 20 for the subtle shift
    quiet = {"shifted": False, "n": 60, "p_value": 0.4, "alpha": 0.05}
    text = shift_text(quiet)
    assert "batches of 60" in text and f"{0.735:.0%}" in text and "SHIFT.md" in text
    assert "under 30%" in shift_text({**quiet, "n": 12})
    loud = {**quiet, "shifted": True, "p_value": 1e-9, "tests": {"classifier": {"auc": 0.99}}}
    assert "reveal" not in shift_text(loud) and "SHIFT:" in shift_text(loud)


def test_the_record_carries_the_measured_power_at_its_size():
    rng = np.random.default_rng(0)
    reference = ShiftReference.fit(rng.normal(size=(60, 8)), rng.normal(size=(60, 4)), rng.normal(size=(60, 8)), {})
    record = shift_test(reference, rng.normal(size=(25, 8)), rng.normal(size=(25, 4)), permutations=50)
    assert record["power"]["at_n"]["another source (SARS-CoV-2 CT slices)"] == 1.0


def class_draw(rng: np.random.Generator, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features that depend on the class (as a network's do), statistics that do not, and a model's scores that
    separate the classes well but not perfectly."""
    f, s = draw(rng, len(labels))
    f = f + 1.5 * labels[:, None]
    scores = 1 / (1 + np.exp(-(3.0 * (labels - 0.5) + rng.normal(size=len(labels)))))
    return f, s, scores


def test_a_class_skewed_batch_of_the_reference_kind_is_not_called_shifted_once_matched():
    rng = np.random.default_rng(12)
    ref_labels = np.r_[np.ones(60), np.zeros(60)]
    rf, rs, rscores = class_draw(rng, ref_labels)
    reference = ShiftReference.fit(rf, rs, BASIS).with_labels(ref_labels, rscores)
    unmatched, matched = [], []
    for d in range(15):
        labels = (rng.random(40) < 0.95).astype(float)  # a COVID ward's batch: 95% positive
        bf, bs, bscores = class_draw(rng, labels)
        unmatched.append(shift_test(reference, bf, bs, permutations=200, seed=d)["shifted"])
        record = shift_test(reference, bf, bs, (bscores, 0.5), permutations=200, seed=d)
        matched.append(record["shifted"])
        mix = record["class_mix"]
        assert mix["matched"] and 0.8 <= mix["batch_positive_share"] <= 1.0 and record["reference_n"] < 120
    assert np.mean(unmatched) >= 0.5  # the class mix alone reads as a shift
    assert np.mean(matched) <= 2 / 15
    bf, bs, bscores = class_draw(rng, (rng.random(40) < 0.95).astype(float))
    still = shift_test(reference, bf + 1.0, bs + 1.0, (bscores, 0.5), permutations=200)
    assert still["shifted"]  # another kind of image is still told apart


def test_a_reference_without_labels_or_a_model_without_skill_uses_all_of_it():
    rng = np.random.default_rng(13)
    labels = np.r_[np.ones(30), np.zeros(30)]
    f, s, scores = class_draw(rng, labels)
    reference = ShiftReference.fit(f, s, BASIS)
    used, mix = reference.matched_to(scores[:20], 0.5)
    assert len(used) == 60 and not mix["matched"] and "no labels" in mix["why"]
    used, mix = reference.with_labels(labels, np.full(60, 0.7)).matched_to(scores[:20], 0.5)
    assert len(used) == 60 and not mix["matched"] and "TPR - FPR" in mix["why"]
    with pytest.raises(ModelError, match="a label and a score for each"):
        reference.with_labels(labels[:10], scores[:10])
    labelled = reference.with_labels(labels, scores)
    again = ShiftReference.from_arrays(labelled.arrays(), {}, "x")
    np.testing.assert_allclose(again.scores, labelled.scores, rtol=1e-6)
    arrays = labelled.arrays()
    arrays["shift.labels"] = arrays["shift.labels"] + 0.5
    with pytest.raises(ModelError, match="damaged"):
        ShiftReference.from_arrays(arrays, {}, "x")
