"""The out-of-distribution detector on features with known distributions: its threshold, its scores against
scikit-learn's own estimator, what it flags, and its storage."""

import json

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from covidct.errors import ModelError
from covidct.ood.detector import METHODS, OODDetector, fit_detector


def gaussian(n: int, dim: int = 40, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(dim, dim)) / np.sqrt(dim)  # the same correlations every call
    direction = np.random.default_rng(7).normal(size=dim)  # a shift in no special direction (not along the mean)
    return rng.normal(size=(n, dim)) @ mixing + 3.0 + shift * direction


@pytest.mark.parametrize("method", METHODS)
def test_threshold_is_the_validation_percentile_by_construction(method):
    val = gaussian(200, seed=1)
    detector = fit_detector(gaussian(300), val, "arch", method, percentile=95)
    scores = detector.score(val)
    assert detector.threshold == pytest.approx(np.percentile(scores, 95))
    assert detector.info["val_flagged"] == pytest.approx(np.mean(scores > detector.threshold))
    assert 0.04 <= detector.info["val_flagged"] <= 0.06  # ~5% of in-distribution images flag, by construction
    strict = fit_detector(gaussian(300), val, "arch", method, percentile=80)
    assert 0.18 <= strict.info["val_flagged"] <= 0.22


def test_mahalanobis_equals_scikit_learns_ledoit_wolf_precision():
    """The stored low-rank form gives the distance the full shrunk precision matrix gives (n < p and n > p)."""
    for n, dim in ((30, 60), (200, 20)):
        train, val = gaussian(n, dim), gaussian(50, dim, seed=3)
        detector = fit_detector(train, val, "arch", "mahalanobis")
        z_train = (train - detector.center) / detector.scale
        z_val = (val - detector.center) / detector.scale
        precision = LedoitWolf(assume_centered=True).fit(z_train).precision_
        want = np.sqrt(np.einsum("ij,jk,ik->i", z_val, precision, z_val))
        np.testing.assert_allclose(detector.score(val), want, rtol=1e-8)


# kNN on L2-normalised features sees directions only, so it needs a larger shift to flag as surely (the property
# that made Mahalanobis the default: benchmarks/OOD.md)
@pytest.mark.parametrize(("method", "shift", "flagged"), [("mahalanobis", 1.5, 0.95), ("knn", 5.0, 0.9)])
def test_a_shifted_set_is_flagged_and_the_same_set_unshifted_is_not(method, shift, flagged):
    detector = fit_detector(gaussian(300), gaussian(200, seed=1), "arch", method)
    same = detector.flags(detector.score(gaussian(200, seed=2)))
    shifted = detector.flags(detector.score(gaussian(200, shift=shift, seed=2)))
    assert same.mean() <= 0.12
    assert shifted.mean() >= flagged


@pytest.mark.parametrize("method", METHODS)
def test_saved_and_loaded_scores_the_same_and_keeps_no_pickle(method, tmp_path):
    detector = fit_detector(
        gaussian(100), gaussian(50, seed=1), "efficientnet_lite0", method, info={"fitted_on": ["a"]}
    )
    detector.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ood.json", "ood.safetensors"]
    again = OODDetector.load(tmp_path)
    x = gaussian(20, seed=5)
    np.testing.assert_allclose(again.score(x), detector.score(x), rtol=1e-4)  # stored as float32
    assert again.threshold == detector.threshold and again.info["fitted_on"] == ["a"]
    assert OODDetector.load(tmp_path / "nothing") is None


def test_damaged_or_foreign_detectors_are_refused_clearly(tmp_path):
    detector = fit_detector(gaussian(100), gaussian(50, seed=1), "arch", "mahalanobis")
    detector.save(tmp_path)
    with pytest.raises(ModelError, match="expects 40 features per image, got 12"):
        detector.score(np.zeros((3, 12)))
    card = json.loads((tmp_path / "ood.json").read_text())
    (tmp_path / "ood.json").write_text(json.dumps({**card, "feature_dim": 7}))
    with pytest.raises(ModelError, match="damaged"):
        OODDetector.load(tmp_path)
    (tmp_path / "ood.json").write_text(json.dumps(card))
    (tmp_path / "ood.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot be read"):
        OODDetector.load(tmp_path)


def test_bad_fitting_input_is_refused():
    with pytest.raises(ModelError, match="method"):
        fit_detector(gaussian(10), gaussian(5), "arch", "energy")
    with pytest.raises(ModelError, match="percentile"):
        fit_detector(gaussian(10), gaussian(5), "arch", percentile=100)
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
    detector = fit_detector(gaussian(100), gaussian(50, seed=1), "arch", "mahalanobis")
    before = blas_threads()
    assert len(detector.score(gaussian(10, seed=2))) == 10
    assert seen and all(n == 1 for n in seen[-1]) and blas_threads() == before
