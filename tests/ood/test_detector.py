"""The out-of-distribution detector on features with known distributions: its threshold, its scores against
scikit-learn's own estimator, what it flags, and its storage."""

import json
import re

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from covidct.errors import ModelError
from covidct.ood.detector import METHODS
from covidct.ood.fit import DetectorRecipe, fit_detector, fit_out_of_fold
from covidct.ood.pixels import PIXEL_STATISTICS
from covidct.ood.storage import load_detector, save_detector


def gaussian(n: int, dim: int = 40, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(dim, dim)) / np.sqrt(dim)  # the same correlations every call
    direction = np.random.default_rng(7).normal(size=dim)  # a shift in no special direction (not along the mean)
    return rng.normal(size=(n, dim)) @ mixing + 3.0 + shift * direction


@pytest.mark.parametrize("method", METHODS)
def test_threshold_is_the_validation_percentile_by_construction(method):
    val = gaussian(200, seed=1)
    detector = fit_detector(gaussian(300), val, "arch", DetectorRecipe(method, 95))
    scores = detector.score(val)
    assert detector.threshold == pytest.approx(np.percentile(scores, 95))
    assert detector.info["val_flagged"] == pytest.approx(np.mean(scores > detector.threshold))
    assert 0.04 <= detector.info["val_flagged"] <= 0.06  # ~5% of in-distribution images flag, by construction
    strict = fit_detector(gaussian(300), val, "arch", DetectorRecipe(method, 80))
    assert 0.18 <= strict.info["val_flagged"] <= 0.22


def test_mahalanobis_equals_scikit_learns_ledoit_wolf_precision():
    """The stored low-rank form gives the distance the full shrunk precision matrix gives (n < p and n > p)."""
    for n, dim in ((30, 60), (200, 20)):
        train, val = gaussian(n, dim), gaussian(50, dim, seed=3)
        detector = fit_detector(train, val, "arch", DetectorRecipe("mahalanobis"))
        z_train = (train - detector.center) / detector.scale
        z_val = (val - detector.center) / detector.scale
        precision = LedoitWolf(assume_centered=True).fit(z_train).precision_
        want = np.sqrt(np.einsum("ij,jk,ik->i", z_val, precision, z_val))
        np.testing.assert_allclose(detector.score(val), want, rtol=1e-8)


# kNN on L2-normalised features sees directions only, so it needs a larger shift to flag as surely (the property
# that made Mahalanobis the default: benchmarks/OOD.md)
@pytest.mark.parametrize(("method", "shift", "flagged"), [("mahalanobis", 1.5, 0.95), ("knn", 5.0, 0.9)])
def test_a_shifted_set_is_flagged_and_the_same_set_unshifted_is_not(method, shift, flagged):
    detector = fit_detector(gaussian(300), gaussian(200, seed=1), "arch", DetectorRecipe(method))
    same = detector.flags(detector.score(gaussian(200, seed=2)))
    shifted = detector.flags(detector.score(gaussian(200, shift=shift, seed=2)))
    assert same.mean() <= 0.12
    assert shifted.mean() >= flagged


@pytest.mark.parametrize("method", METHODS)
def test_saved_and_loaded_scores_the_same_and_keeps_no_pickle(method, tmp_path):
    detector = fit_detector(
        gaussian(100), gaussian(50, seed=1), "efficientnet_lite0", DetectorRecipe(method), info={"fitted_on": ["a"]}
    )
    save_detector(detector, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ood.json", "ood.safetensors"]
    again = load_detector(tmp_path)
    x = gaussian(20, seed=5)
    np.testing.assert_allclose(again.score(x), detector.score(x), rtol=1e-4)  # stored as float32
    assert again.threshold == detector.threshold and again.info["fitted_on"] == ["a"]
    assert load_detector(tmp_path / "nothing") is None


def test_damaged_or_foreign_detectors_are_refused_clearly(tmp_path):
    detector = fit_detector(gaussian(100), gaussian(50, seed=1), "arch", DetectorRecipe("mahalanobis"))
    save_detector(detector, tmp_path)
    with pytest.raises(ModelError, match="expects 40 features per image, got 12"):
        detector.score(np.zeros((3, 12)))
    card = json.loads((tmp_path / "ood.json").read_text())
    (tmp_path / "ood.json").write_text(json.dumps({**card, "feature_dim": 7}))
    with pytest.raises(ModelError, match="damaged"):
        load_detector(tmp_path)
    (tmp_path / "ood.json").write_text(json.dumps(card))
    (tmp_path / "ood.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot be read"):
        load_detector(tmp_path)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda c: {**c, "thresold": 1.0}, "'thresold' is not a field"),  # a misspelt field is not ignored
        (lambda c: {k: v for k, v in c.items() if k != "percentile"}, "'percentile' field required"),
        (lambda c: {**c, "n_train": "many"}, "'n_train' input should be a valid integer"),
        (lambda c: {**c, "framing": {"statistics": [], "threshold": 1, "method": "m", "x": 0}}, "'framing.x' is not"),
        (lambda c: {**c, "format": "covidct-ood/9"}, "'format'"),
        (lambda c: [c], "must hold a JSON object"),
    ],
)
def test_the_detector_card_is_typed_and_refuses_bad_fields_by_name(tmp_path, change, named):
    detector = fit_detector(
        gaussian(60), gaussian(30, seed=1), "arch", DetectorRecipe("mahalanobis"), info={"n_train": 60}
    )
    save_detector(detector, tmp_path)
    card = json.loads((tmp_path / "ood.json").read_text())
    (tmp_path / "ood.json").write_text(json.dumps(change(card)))
    with pytest.raises(ModelError, match=named) as refused:
        load_detector(tmp_path)
    assert str(tmp_path / "ood.json") in str(refused.value) and "covidct ood fit RUN" in str(refused.value)


def test_bad_fitting_input_is_refused():
    with pytest.raises(ModelError, match="method"):
        fit_detector(gaussian(10), gaussian(5), "arch", DetectorRecipe("energy"))
    with pytest.raises(ModelError, match="percentile"):
        fit_detector(gaussian(10), gaussian(5), "arch", DetectorRecipe(percentile=100))
    with pytest.raises(ModelError, match=">= 2 training"):
        fit_detector(gaussian(1), gaussian(5), "arch")


def test_scoring_runs_numpys_blas_on_one_thread_and_gives_back_the_others(monkeypatch):
    """OpenBLAS's idle workers spin after a product and slow the network's next pass (benchmarks/OOD.md)."""
    from threadpoolctl import threadpool_info

    import covidct.ood.detector as detector_module

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    seen: list[list[int]] = []
    real = detector_module.ood_scores
    monkeypatch.setattr(detector_module, "ood_scores", lambda *a: (seen.append(blas_threads()), real(*a))[1])
    detector = fit_detector(gaussian(100), gaussian(50, seed=1), "arch", DetectorRecipe("mahalanobis"))
    before = blas_threads()
    assert len(detector.score(gaussian(10, seed=2))) == 10
    assert seen and all(n == 1 for n in seen[-1]) and blas_threads() == before


def framing_stats(n: int, seed: int = 0, margin: float = 0.0) -> np.ndarray:
    """Framing statistics of figures cropped to the body (aspect about 1.4, a few margin rows), or with `margin`
    of their rows empty and a square frame: a whole scanner slice."""
    rng = np.random.default_rng(seed)
    aspect = np.log(rng.normal(1.4, 0.12, n)) * (margin == 0)
    rows = np.clip(rng.normal(0.03, 0.02, n), 0, 1) + margin
    return np.c_[aspect, rows, np.clip(rng.normal(0.02, 0.02, n), 0, 1)]


def test_the_framing_half_flags_a_square_frame_and_combines_on_one_footing(tmp_path):
    train, val = gaussian(300), gaussian(200, seed=1)
    detector = fit_detector(
        {"features": train, "framing": framing_stats(300)},
        {"features": val, "framing": framing_stats(200, 1)},
        "arch",
        DetectorRecipe("mahalanobis"),
    )
    both = detector.score(val, framing_stats(200, 1))
    assert detector.threshold == pytest.approx(np.percentile(both, 95))  # the combined score's percentile
    features_alone = fit_detector(train, val, "arch", DetectorRecipe("mahalanobis")).score(val)
    framing_alone = detector.framing.score(framing_stats(200, 1))
    np.testing.assert_allclose(both, np.maximum(features_alone / detector.refs[0], framing_alone / detector.refs[1]))
    same = gaussian(200, seed=2)
    assert detector.flags(detector.score(same, framing_stats(200, 2))).mean() <= 0.12
    assert detector.flags(detector.score(same, framing_stats(200, 2, margin=0.3))).mean() >= 0.95
    save_detector(detector, tmp_path)
    loaded = load_detector(tmp_path)
    assert loaded is not None and loaded.refs == pytest.approx(detector.refs)
    np.testing.assert_allclose(
        loaded.score(same, framing_stats(200, 2)), detector.score(same, framing_stats(200, 2)), rtol=1e-5
    )
    with pytest.raises(ModelError, match="framing statistics"):
        loaded.score(same)


def test_a_source_framed_all_alike_does_not_flag_rounding():
    """Every training and validation image framed the same (one scanner's crops): float32 storage and a shrunk
    copy's pixel of rounding must not flag; a real margin must."""
    alike = np.tile([np.log(1.35), 0.0, 0.0], (100, 1))
    detector = fit_detector(
        {"features": gaussian(100), "framing": alike},
        {"features": gaussian(50, seed=1), "framing": alike[:50]},
        "arch",
        DetectorRecipe("mahalanobis"),
    )
    rounding = alike[:50] + np.array([0.004, 0.0, 0.0])
    exact = detector.flags(detector.score(gaussian(50, seed=1), alike[:50]))  # about 5%, by the features alone
    np.testing.assert_array_equal(
        detector.flags(detector.score(gaussian(50, seed=1), rounding.astype(np.float32))), exact
    )
    framed = alike[:50] + np.array([-np.log(1.35), 0.2, 0.0])
    assert detector.flags(detector.score(gaussian(50, seed=1), framed)).all()


def test_a_damaged_framing_half_is_refused(tmp_path):
    detector = fit_detector(
        {"features": gaussian(50), "framing": framing_stats(50)},
        {"features": gaussian(20, seed=1), "framing": framing_stats(20, 1)},
        "arch",
        DetectorRecipe("mahalanobis"),
    )
    save_detector(detector, tmp_path)
    card = json.loads((tmp_path / "ood.json").read_text())
    (tmp_path / "ood.json").write_text(json.dumps({**card, "framing": {**card["framing"], "statistics": ["size"]}}))
    with pytest.raises(ModelError, match="framing half"):
        load_detector(tmp_path)


def pixel_stats(n: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """Pixel statistics (22 of them, covidct.ood.pixels) of one source's images; `shift` moves them as another
    reconstruction or window would."""
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, len(PIXEL_STATISTICS))) + shift


def test_the_pixel_half_flags_another_source_and_combines_on_the_two_halves_footing(tmp_path):
    train, val = gaussian(300), gaussian(200, seed=1)
    framing = (framing_stats(300), framing_stats(200, 1))
    detector = fit_detector(
        {"features": train, "framing": framing[0], "pixels": pixel_stats(300)},
        {"features": val, "framing": framing[1], "pixels": pixel_stats(200, 1)},
        "arch",
        DetectorRecipe("mahalanobis"),
    )
    two = fit_detector(
        {"features": train, "framing": framing[0]}, {"features": val, "framing": framing[1]}, "arch", DetectorRecipe()
    )  # the same, without the pixel half
    assert detector.image_halves == ("framing", "pixels") and two.image_halves == ("framing",)
    assert (
        fit_detector(train, val, "arch", DetectorRecipe("mahalanobis")).image_halves == ()
    )  # what every caller computes for it
    both = detector.score(val, framing[1], pixel_stats(200, 1))
    assert detector.threshold == pytest.approx(np.percentile(both, 95))  # the combined score's percentile
    pixels_alone = detector.pixels.score(pixel_stats(200, 1))
    two_ref = np.percentile(two.score(val, framing[1]), 95)
    np.testing.assert_allclose(
        both, np.maximum(two.score(val, framing[1]), pixels_alone / detector.pixels.threshold * two_ref)
    )
    same = gaussian(200, seed=2)
    assert detector.flags(detector.score(same, framing_stats(200, 2), pixel_stats(200, 2))).mean() <= 0.12
    assert detector.flags(detector.score(same, framing_stats(200, 2), pixel_stats(200, 2, shift=2.0))).mean() >= 0.95
    save_detector(detector, tmp_path)
    loaded = load_detector(tmp_path)
    assert loaded is not None and loaded.pixel_ref == pytest.approx(detector.pixel_ref)
    np.testing.assert_allclose(
        loaded.score(same, framing_stats(200, 2), pixel_stats(200, 2)),
        detector.score(same, framing_stats(200, 2), pixel_stats(200, 2)),
        rtol=1e-5,
    )
    with pytest.raises(ModelError, match="pixel statistics"):  # the pixel half cannot be skipped by mistake
        loaded.score(same, framing_stats(200, 2))
    card = json.loads((tmp_path / "ood.json").read_text())
    (tmp_path / "ood.json").write_text(json.dumps({**card, "pixels": {**card["pixels"], "ref": "none"}}))
    with pytest.raises(ModelError, match=r"field 'pixels\.ref' input should be a valid number"):
        load_detector(tmp_path)
    (tmp_path / "ood.json").write_text(json.dumps({k: v for k, v in card.items() if k != "pixels"}))
    older = load_detector(tmp_path)  # a detector saved before the pixel half: two halves, as it was fitted
    assert older is not None and older.pixels is None
    assert len(older.score(same, framing_stats(200, 2))) == 200


def patients(n_groups: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of `n_groups` patients, `per` each: a patient's images lie close together around its own offset."""
    offsets = np.random.default_rng(seed).normal(0.0, 1.0, (n_groups, 40))
    images = [0.3 * gaussian(per, seed=seed * 1000 + g) + offsets[g] for g in range(n_groups)]
    return np.concatenate(images), np.repeat(np.arange(n_groups), per)


def test_out_of_fold_threshold_is_what_a_new_patient_scores():
    """A source without validation images (an adapted model's site): its threshold comes from images scored by the
    detector fitted without their patient, so a new patient's images flag at about the percentile's rate. Held out
    image by image, a patient's other images stay in the fit and the threshold is too low."""
    train, groups = patients(24, 8, seed=1)
    detector = fit_out_of_fold(
        {"features": train, "framing": framing_stats(192)}, groups, "arch", DetectorRecipe("mahalanobis")
    )
    assert detector.info["threshold_on"] == "out of fold (5 folds by group)" and detector.info["n_val"] == 192
    by_image = fit_out_of_fold(
        {"features": train, "framing": framing_stats(192)}, np.arange(len(train)), "arch", DetectorRecipe("mahalanobis")
    )
    new, _ = patients(24, 8, seed=2)
    assert by_image.refs[0] < 0.7 * detector.refs[0]  # the features half's percentile, from the held-out scores
    assert detector.flags(detector.score(new, framing_stats(192, 3))).mean() <= 0.12
    assert by_image.flags(by_image.score(new, framing_stats(192, 3))).mean() >= 0.3
    with pytest.raises(ModelError, match="a group per image"):
        fit_out_of_fold(train, groups[:10], "arch", DetectorRecipe("mahalanobis"))


@pytest.mark.parametrize(
    ("fitted", "change", "named"),
    [
        ("mahalanobis", {"threshold": -1.0}, "threshold -1.0"),  # every image flagged
        ("mahalanobis", {"k": 0}, "k 0"),
        ("mahalanobis", {"percentile": 500.0}, "percentile 500.0"),
        ("knn", {"method": "mahalanobis"}, "method 'mahalanobis'"),  # another method's arrays
    ],
)
def test_a_detector_whose_values_cannot_be_what_fitting_made_is_refused(tmp_path, fitted, change, named):
    detector = fit_detector(gaussian(60), gaussian(30, seed=1), "arch", DetectorRecipe(fitted))
    save_detector(detector, tmp_path)
    card = json.loads((tmp_path / "ood.json").read_text())
    (tmp_path / "ood.json").write_text(json.dumps({**card, **change}))
    with pytest.raises(ModelError, match=f"is damaged \\(.*{re.escape(named)}.*refit it") as refused:
        load_detector(tmp_path)
    assert str(tmp_path / "ood.json") in str(refused.value)


def test_a_knn_method_on_a_mahalanobis_detectors_arrays_is_refused_not_met_as_scikit_learns_error(tmp_path):
    """Features wider than the training images are many: the arrays of one method do not score for the other."""
    rng = np.random.default_rng(0)
    detector = fit_detector(rng.normal(size=(30, 64)), rng.normal(size=(20, 64)), "arch", DetectorRecipe("mahalanobis"))
    save_detector(detector, tmp_path)
    card = json.loads((tmp_path / "ood.json").read_text())
    (tmp_path / "ood.json").write_text(json.dumps({**card, "method": "knn"}))
    with pytest.raises(ModelError, match=r"is damaged \(its knn arrays do not score an image"):
        load_detector(tmp_path)
