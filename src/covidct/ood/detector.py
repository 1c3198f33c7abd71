"""The out-of-distribution detector stored with every model: the Mahalanobis distance of an image's detector features
(features.py: channel statistics of every stage and the pooled features, standardised on the training images) under
a Ledoit-Wolf shrunk covariance, or k-nearest neighbours (Sun et al. 2022) on the same features L2-normalised. The
threshold is a percentile of the validation images' scores, so that by construction about (100 - percentile)% of
in-distribution images are flagged.

Why not pytorch-ood or oodeel: both score a classifier's penultimate features or logits through their own model
wrappers; this detector needs the statistics of several stages gathered in the same pass as the score, stored as plain
arrays (safetensors, no pickle) and computed the same by the ONNX graph. Measured too: pytorch-ood's ViM, Mahalanobis,
relative Mahalanobis and kNN on the pooled features flag 5-11% of the other source for a COVID-CT model and 5-33% of its
images padded to a square, against 100% for this one with its framing half (benchmarks/ood_compare.py, OOD.md). scikit-
learn estimates the shrinkage (ledoit_wolf_shrinkage) and does the neighbour search; the precision is kept as the
training data's principal axes and shrunk variances (exact, and p x n numbers instead of p x p: 5 MB instead of 32 MB
for efficientnet_lite0).
The methods were measured side by side: benchmarks/OOD.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covidct.errors import ModelError
from covidct.ood.acquisition import Acquisition, AcquisitionRecord
from covidct.ood.card import FORMAT
from covidct.ood.distances import one_blas_thread, ood_scores
from covidct.ood.framing import FRAMING_STATISTICS
from covidct.ood.image_statistics import IMAGE_STATISTICS
from covidct.ood.pixels import PIXEL_STATISTICS
from covidct.ood.shift import ShiftReference

WEIGHTS = "ood.safetensors"
CARD = "ood.json"
DEFAULT_PERCENTILE = 95.0  # of the validation images' scores: about 5% of in-distribution images flag
DEFAULT_K = 1
METHODS = ("knn", "mahalanobis")
PERCENTILES = (50.0, 100.0)  # a detector's percentile: at least the first, under the second
# The framing half's score is divided by its validation percentile, but by no less than this: two resolution units
# (ood/framing.py), so that a source whose validation images are all framed alike does not flag rounding.
MIN_FRAMING_REF = 2.0


@dataclass
class OODDetector:
    """Everything a detector needs, as arrays and plain values (saved as safetensors + JSON)."""

    method: str
    architecture: str
    feature_dim: int
    center: np.ndarray  # per-feature mean of the training features
    scale: np.ndarray  # per-feature standard deviation (floored)
    bank: np.ndarray  # knn: the training images' normalised features; mahalanobis: principal axes (p x r)
    location: np.ndarray  # mahalanobis: the shrunk variance along each axis, then the floor of all others (r + 1)
    threshold: float
    percentile: float
    k: int = DEFAULT_K
    info: dict[str, Any] = field(default_factory=dict)  # what it was fitted on, its rate on validation
    acquisitions: AcquisitionRecord | None = None  # what the training images held (acquisition.py); None: not yet
    # The framing half (covidct.ood.framing: shape and empty margins of the image as given), a Mahalanobis detector
    # of its own; the score is then the larger of the two halves' scores, each divided by its own validation
    # percentile (refs), so that neither half's units dominate. None: features only (a half's own detector).
    framing: OODDetector | None = None
    refs: tuple[float, float] = (1.0, 1.0)
    # The pixel half (covidct.ood.pixels: the central region's histogram, noise and texture), combined the same way
    # with its own validation percentile (pixel_ref). None: no pixel half (a half's own detector).
    pixels: OODDetector | None = None
    pixel_ref: float = 1.0
    # The model's other training sources (a multi-source model's, an adapted model's site), each a detector of its
    # own with the same halves, fitted on that source's images alone and thresholded on its own held-out images: an
    # image is in distribution when it is like any one source. One Gaussian over two sources put the smaller in its
    # tail (a model trained on both: 23% of its own COVID-CT images flagged; an adapted model: 69% of its site's new
    # images; benchmarks/OOD.md). Empty: one source.
    others: list[OODDetector] = field(default_factory=list)
    # With other sources: this source's own threshold, the unit every source's score is put in; `threshold` is then
    # the lowest at which no source's held-out images flag more than (100 - percentile)% (covidct.ood.fit).
    own_threshold: float | None = None
    # The batch shift test's reference (covidct.ood.shift): the validation images' features and image statistics.
    # None: a model without 20 validation images.
    reference: ShiftReference | None = None
    # The held-out images' half scores the threshold was set on (calibrate); for fitting only, never saved.
    held_out: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ModelError(
                f"the out-of-distribution detector expects {self.feature_dim} features per image, got "
                f"{features.shape[-1] if features.ndim else 0}: it was fitted for another model; refit it with "
                "covidct ood fit RUN"
            )
        return (features - self.center) / self.scale

    def half_scores(
        self, features: np.ndarray, framing: np.ndarray | None = None, pixels: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Each half's own score ("features", and "framing" and "pixels" when the detector has those halves).
        NumPy's BLAS on one thread: a batch's product takes about a millisecond, and OpenBLAS's worker threads
        then spin for a while, taking the cores from the network's next forward pass (measured: +21% on a
        prediction with them, +5% without: benchmarks/OOD.md)."""
        with one_blas_thread():
            raw = {"features": ood_scores(self.method, self.standardise(features), self.bank, self.location, self.k)}
        if self.framing is not None:
            if framing is None:
                raise ModelError(
                    "this out-of-distribution detector also checks the images' framing: pass their "
                    "framing statistics (covidct.ood.image_statistics.statistics_of)"
                )
            raw["framing"] = self.framing.score(framing)
        if self.pixels is not None:
            if pixels is None:
                raise ModelError(
                    "this out-of-distribution detector also checks the images' pixel statistics: pass "
                    "them (covidct.ood.image_statistics.statistics_of)"
                )
            raw["pixels"] = self.pixels.score(pixels)
        return raw

    def check_current(self, where: str) -> OODDetector:
        """This detector, when it is of the current format for a model (the framing and pixel halves and the
        acquisition record: what `covidct ood fit` and training write); a detector of an older covidct is refused
        with how to refit it, never scored with fewer checks than a user would expect."""
        missing = [name for name in ("framing", "pixels", "acquisitions") if getattr(self, name) is None]
        if missing:
            older = f"the out-of-distribution detector in {where} was fitted by an older covidct (it has no {missing})"
            raise ModelError(f"{older}; refit it: covidct ood fit RUN")
        return self

    @property
    def image_halves(self) -> tuple[str, ...]:
        """The image statistics this detector checks beside the features, by name (ood/image_statistics.py): what
        every caller computes for it, decided here only."""
        return tuple(name for name in IMAGE_STATISTICS if getattr(self, name) is not None)  # a half per statistic

    def combine(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        """One score from the halves' (half_scores): the larger, each divided by its validation reference."""
        scores = raw["features"]
        if self.framing is not None:
            scores = np.maximum(scores / self.refs[0], raw["framing"] / self.refs[1])
        if self.pixels is not None:
            scores = np.maximum(scores, raw["pixels"] / self.pixel_ref)
        return scores

    def score(
        self, features: np.ndarray, framing: np.ndarray | None = None, pixels: np.ndarray | None = None
    ) -> np.ndarray:
        """Higher = less like the training images. `framing` and `pixels`: the images' framing and pixel statistics
        (covidct.ood.image_statistics.statistics_of), needed for the detector's image_halves. With
        other sources, the smallest of the sources' scores, each in units of this detector's threshold."""
        scores = self.combine(self.half_scores(features, framing, pixels))
        unit = self.threshold if self.own_threshold is None else self.own_threshold
        for other in self.others:
            own = other.combine(other.half_scores(features, framing, pixels))
            scores = np.minimum(scores, own * (unit / max(other.threshold, 1e-12)))
        return scores

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """True where an image is out of distribution (its score above the threshold)."""
        return np.asarray(scores) > self.threshold

    def unseen_acquisition(self, acq: Acquisition) -> str | None:
        """Why an input's acquisition is outside what the training images held (acquisition.py), or None; None
        too for a detector fitted before the record existed."""
        return None if self.acquisitions is None else self.acquisitions.unseen(acq)

    def describe(self) -> dict[str, Any]:
        record = {} if self.acquisitions is None else {"acquisitions": self.acquisitions.to_json()}
        if self.framing is not None:
            record["framing"] = {
                "statistics": list(FRAMING_STATISTICS),
                "refs": list(self.refs),
                "threshold": self.framing.threshold,
                "method": self.framing.method,
            }
        if self.pixels is not None:
            record["pixels"] = {
                "statistics": list(PIXEL_STATISTICS),
                "ref": self.pixel_ref,
                "threshold": self.pixels.threshold,
                "method": self.pixels.method,
            }
        if self.others:
            record["sources"] = [{k: v for k, v in o.describe().items() if k != "format"} for o in self.others]
            record["own_threshold"] = self.own_threshold
        if self.reference is not None:
            record["shift"] = self.reference.info
        return {
            "format": FORMAT,
            "method": self.method,
            "k": self.k,
            "architecture": self.architecture,
            "feature_dim": self.feature_dim,
            "threshold": self.threshold,
            "percentile": self.percentile,
            **self.info,
            **record,
        }

    def card(self) -> dict[str, Any]:
        """What a model card says of its detector (and, in words, which acquisitions it has seen)."""
        seen = {} if self.acquisitions is None else {"acquisitions_seen": self.acquisitions.summary()}
        return {**{k: v for k, v in self.describe().items() if k != "format"}, **seen}
