"""A detector per training source (covidct.ood.fit.fit_by_source): a small source (an adapted model's site, the
smaller of two training sources) stays in distribution where one Gaussian over all would flag it, while what is like
no source still flags; its storage."""

import json

import numpy as np
import pytest

from covidct.errors import ModelError
from covidct.ood.detector import OODDetector
from covidct.ood.fit import DetectorRecipe, fit_by_source, fit_detector
from covidct.ood.storage import load_detector, save_detector
from tests.ood.test_detector import framing_stats, gaussian, pixel_stats


def images(n: int, shift: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """The three inputs of the detector for n images of one source (`shift` moves every half)."""
    return {
        "features": gaussian(n, shift=shift, seed=seed),
        "framing": framing_stats(n, seed) + 0.05 * shift,
        "pixels": pixel_stats(n, seed, shift=0.5 * shift),
    }


def joined(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def score(detector: OODDetector, x: dict[str, np.ndarray]) -> np.ndarray:
    return detector.score(x["features"], x["framing"], x["pixels"])


@pytest.mark.parametrize("site_validation", [True, False])  # False: the site's threshold out of fold by group
def test_a_small_source_keeps_its_own_detector(site_validation, tmp_path):
    big, site = images(400, seed=1), images(40, shift=6.0, seed=2)
    val = joined(images(150, seed=3), images(20, shift=6.0, seed=4)) if site_validation else images(150, seed=3)
    val_sources = ["big"] * 150 + ["site"] * (20 if site_validation else 0)
    groups = [f"g{i // 4}" for i in range(440)]  # patients of 4 images each
    train = {**joined(big, site), "source": ["big"] * 400 + ["site"] * 40, "group": groups}
    detector = fit_by_source(train, {**val, "source": val_sources}, "arch")
    assert [o.info["source"] for o in detector.others] == ["site"] and detector.pixels is not None
    assert [p["source"] for p in detector.info["per_source"]] == ["big", "site"]
    assert detector.others[0].info["threshold_on"] == ("val" if site_validation else "out of fold (5 folds by group)")
    new_site, elsewhere = images(200, shift=6.0, seed=5), images(200, shift=-6.0, seed=6)
    assert detector.flags(score(detector, new_site)).mean() <= 0.15  # a site's new patients: in distribution
    assert detector.flags(score(detector, elsewhere)).mean() >= 0.95  # like no source: flagged
    assert detector.flags(score(detector, images(200, seed=7))).mean() <= 0.12
    both, big_val = joined(big, site), images(150, seed=3)  # one Gaussian over both, thresholded on the big source
    pooled = fit_detector(both, big_val, "arch", DetectorRecipe("mahalanobis"))
    assert pooled.flags(score(pooled, new_site)).mean() >= 0.5  # what one Gaussian over both did to the site
    primary, other = detector, detector.others[0]  # the smaller of the sources' scores, in the first's units
    own = OODDetector.combine(
        primary, primary.half_scores(new_site["features"], new_site["framing"], new_site["pixels"])
    )
    theirs = other.combine(other.half_scores(new_site["features"], new_site["framing"], new_site["pixels"]))
    unit = primary.own_threshold  # the first source's own threshold; the whole's is set on every held-out image
    np.testing.assert_allclose(score(detector, new_site), np.minimum(own, theirs * unit / other.threshold))
    shares = [p["flagged"] for p in detector.info["per_source"]]  # of each source's held-out images: <= 5%, one at it
    assert max(shares) == pytest.approx(0.05, abs=0.006) and min(shares) <= 0.05
    if site_validation:  # the held-out images are both sources' validation images
        flagged = detector.flags(score(detector, val))
        assert [flagged[:150].mean(), flagged[150:].mean()] == pytest.approx(shares)
    save_detector(detector, tmp_path)
    loaded = load_detector(tmp_path)
    assert loaded is not None and len(loaded.others) == 1 and loaded.others[0].pixels is not None
    np.testing.assert_allclose(score(loaded, new_site), score(detector, new_site), rtol=1e-5)
    np.testing.assert_allclose(score(loaded, elsewhere), score(detector, elsewhere), rtol=1e-5)


def test_a_damaged_source_is_refused(tmp_path):
    val = images(60, seed=3)
    train = joined(images(100, seed=1), images(30, shift=4.0, seed=2))
    train |= {"source": ["a"] * 100 + ["b"] * 30, "group": [str(i) for i in range(130)]}
    detector = fit_by_source(train, {**val, "source": ["a"] * 60}, "arch")
    save_detector(detector, tmp_path)
    card = json.loads((tmp_path / "ood.json").read_text())
    (tmp_path / "ood.json").write_text(json.dumps({**card, "sources": {"b": card["sources"][0]}}))
    with pytest.raises(ModelError, match="field 'sources' input should be a valid list"):
        load_detector(tmp_path)
    (tmp_path / "ood.json").write_text(json.dumps({**card, "sources": [{**card["sources"][0], "feature_dim": 7}]}))
    with pytest.raises(ModelError, match="damaged"):
        load_detector(tmp_path)
    (tmp_path / "ood.json").write_text(json.dumps({**card, "sources": [{**card["sources"][0], "architecture": "x"}]}))
    with pytest.raises(ModelError, match="source 2 \\(b\\) does not match"):
        load_detector(tmp_path)
    (tmp_path / "ood.json").write_text(json.dumps({k: v for k, v in card.items() if k != "own_threshold"}))
    with pytest.raises(ModelError, match="own threshold"):
        load_detector(tmp_path)
    (tmp_path / "ood.json").write_text(json.dumps({k: v for k, v in card.items() if k != "sources"}))
    alone = load_detector(tmp_path)  # the first source's detector alone, as saved before sources were kept
    assert alone is not None and alone.others == [] and alone.threshold == pytest.approx(detector.threshold)
