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

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import ModelError
from covidct.ood.acquisition import Acquisition, AcquisitionRecord
from covidct.ood.card import FORMAT, checked_card
from covidct.ood.framing import FRAMING_STATISTICS, RESOLUTION
from covidct.ood.image_statistics import IMAGE_STATISTICS
from covidct.ood.pixels import PIXEL_STATISTICS
from covidct.ood.shift import ShiftReference

WEIGHTS = "ood.safetensors"
CARD = "ood.json"
DEFAULT_PERCENTILE = 95.0  # of the validation images' scores: about 5% of in-distribution images flag
DEFAULT_K = 1
METHODS = ("knn", "mahalanobis")
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

    def save(self, folder: str | Path) -> Path:
        """ood.safetensors (the arrays) and ood.json (the rest) in `folder`; written atomically."""
        from safetensors.numpy import save_file

        from covidct.fileio import atomic_write, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {**_all_arrays(self), **({} if self.reference is None else self.reference.arrays())}
        card = checked_card(self.describe(), str(folder / CARD))  # the card as every reader will check it
        atomic_write(folder / WEIGHTS, lambda p: save_file(arrays, str(p)))
        write_json(folder / CARD, card)
        return folder / CARD

    @classmethod
    def load(cls, folder: str | Path) -> OODDetector | None:
        """The detector saved in `folder`, or None when there is none. Refuses a damaged one with a clear error."""
        folder = Path(folder)
        card_path, weights = folder / CARD, folder / WEIGHTS
        if not card_path.is_file():
            return None
        where = str(card_path)
        try:
            card = json.loads(card_path.read_text())
            from safetensors.numpy import load_file

            arrays = load_file(str(weights))
        except Exception as e:  # OSError, JSON, safetensors' own SafetensorError: all "unreadable"
            raise ModelError(
                f"out-of-distribution detector in {folder} cannot be read ({type(e).__name__}: {e}); "
                "refit it with covidct ood fit RUN"
            ) from None
        card = checked_card(card, where)
        detector = _from_card(card, arrays, "", where)
        if card.get("acquisitions") is not None:
            detector.acquisitions = AcquisitionRecord.from_json(card["acquisitions"], where)
        others = card.get("sources") or []
        if not isinstance(others, list) or not all(isinstance(c, dict) for c in others):
            raise ModelError(f'{where}: "sources" must be a list of the other sources\' detectors; refit it')
        detector.others = [_from_card(c, arrays, f"sources.{i}.", where) for i, c in enumerate(others)]
        if others:
            try:
                detector.own_threshold = float(card["own_threshold"])
            except (KeyError, TypeError, ValueError) as e:
                raise _damaged(where, "first source's own threshold", e) from None
        for i, other in enumerate(detector.others):
            if (other.architecture, other.feature_dim, other.framing is None, other.pixels is None) != (
                detector.architecture,
                detector.feature_dim,
                detector.framing is None,
                detector.pixels is None,
            ):
                name = other.info.get("source", "?")
                raise ModelError(
                    f"{where}: the detector of source {i + 2} ({name}) does not match the first "
                    "source's (architecture, features or halves); refit it"
                )
        _check_finite(detector, where)
        if card.get("shift") is not None:
            detector.reference = ShiftReference.from_arrays(arrays, card["shift"], where)
        return detector


def _from_card(card: Any, arrays: dict[str, np.ndarray], prefix: str, where: str) -> OODDetector:
    """One source's detector from its ood.json record and the arrays named `prefix`...; a damaged one refused."""
    try:
        detector = OODDetector(
            method=str(card["method"]),
            architecture=str(card["architecture"]),
            feature_dim=int(card["feature_dim"]),
            center=arrays[prefix + "center"].astype(np.float64),
            scale=arrays[prefix + "scale"].astype(np.float64),
            bank=arrays[prefix + "bank"].astype(np.float64),
            location=arrays[prefix + "location"].astype(np.float64),
            threshold=float(card["threshold"]),
            percentile=float(card["percentile"]),
            k=int(card.get("k", DEFAULT_K)),
            info={k: v for k, v in card.items() if k not in _CARD_KEYS},
        )
    except Exception as e:  # missing keys or arrays, wrong types: all "unreadable"
        raise ModelError(
            f"out-of-distribution detector {where} cannot be read ({type(e).__name__}: {e}); "
            "refit it with covidct ood fit RUN"
        ) from None
    if (
        detector.method not in METHODS
        or detector.center.shape != (detector.feature_dim,)
        or (detector.method == "mahalanobis" and detector.location.shape != (detector.bank.shape[1] + 1,))
    ):
        what = f"method {detector.method!r}, {detector.center.shape} centre for {detector.feature_dim} features"
        raise ModelError(f"out-of-distribution detector {where} is damaged ({what}); refit it")
    if card.get("framing") is not None:
        detector.framing, detector.refs = _framing_half(card["framing"], arrays, where, prefix)
    if card.get("pixels") is not None and detector.framing is not None:
        detector.pixels, detector.pixel_ref = _pixels_half(card["pixels"], arrays, where, prefix)
    return detector


def _check_finite(detector: OODDetector, where: str) -> None:
    """Refuse a detector holding a NaN or infinite threshold, reference or array: every comparison with NaN is
    false, so such a detector would flag nothing and the check would be off without a word."""
    values = {
        "threshold": detector.threshold,
        "percentile": detector.percentile,
        "refs": detector.refs,
        "pixel_ref": detector.pixel_ref,
        "own_threshold": detector.own_threshold or 0.0,
    }
    for name, half in (("framing", detector.framing), ("pixels", detector.pixels)):
        if half is not None:
            values[f"{name}.threshold"] = half.threshold
    for i, other in enumerate(detector.others):
        values[f"sources.{i}.threshold"] = other.threshold
    values.update({f"array {k}": v for k, v in _all_arrays(detector).items()})
    for name, value in values.items():
        if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            raise ModelError(
                f"{where}: {name} is not a finite number (NaN or infinite), so the out-of-distribution "
                "check would flag nothing; refit the detector: covidct ood fit RUN"
            )


def _all_arrays(detector: OODDetector, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array of the detector, its halves ("framing.", "pixels.") and its other sources ("sources.I.")."""
    arrays = {prefix + k: v for k, v in _arrays(detector).items()}
    for name, half in (("framing", detector.framing), ("pixels", detector.pixels)):
        if half is not None:
            arrays.update({f"{prefix}{name}.{k}": v for k, v in _arrays(half).items()})
    for i, other in enumerate(detector.others):
        arrays.update(_all_arrays(other, f"{prefix}sources.{i}."))
    return arrays


def _arrays(detector: OODDetector) -> dict[str, np.ndarray]:
    arrays = {"center": detector.center, "scale": detector.scale, "bank": detector.bank, "location": detector.location}
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def _framing_half(
    card: Any, arrays: dict[str, np.ndarray], where: str, prefix: str = ""
) -> tuple[OODDetector, tuple[float, float]]:
    """The framing half saved in ood.json's "framing" and the "framing." arrays; a damaged one refused."""
    try:
        refs = (float(card["refs"][0]), float(card["refs"][1]))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _damaged(where, "framing", e) from None
    return _half(prefix, "framing", FRAMING_STATISTICS, card, arrays, where, min(refs) > 0), refs


def _pixels_half(card: Any, arrays: dict[str, np.ndarray], where: str, prefix: str = "") -> tuple[OODDetector, float]:
    """The pixel half saved in ood.json's "pixels" and the "pixels." arrays; a damaged one refused."""
    try:
        ref = float(card["ref"])
    except (KeyError, TypeError, ValueError) as e:
        raise _damaged(where, "pixels", e) from None
    return _half(prefix, "pixels", PIXEL_STATISTICS, card, arrays, where, ref > 0), ref


def _half(
    prefix: str,
    name: str,
    statistics: tuple[str, ...],
    card: Any,
    arrays: dict[str, np.ndarray],
    where: str,
    refs_ok: bool,
) -> OODDetector:
    n = len(statistics)
    try:
        half = {k: arrays[f"{prefix}{name}.{k}"].astype(np.float64) for k in ("center", "scale", "bank", "location")}
        ok = (
            refs_ok
            and list(card["statistics"]) == list(statistics)
            and half["center"].shape == (n,)
            and half["bank"].shape[0] == n
            and half["location"].shape == (half["bank"].shape[1] + 1,)
        )
        threshold = float(card["threshold"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _damaged(where, name, e) from None
    if not ok:
        raise ModelError(
            f"{where}: the {name} half of the detector does not match {statistics[:3]}...; refit it "
            "with covidct ood fit RUN"
        )
    return OODDetector(
        "mahalanobis", name, n, half["center"], half["scale"], half["bank"], half["location"], threshold, 95.0
    )


def _damaged(where: str, name: str, e: Exception) -> ModelError:
    return ModelError(
        f"{where}: the {name} half of the detector is damaged ({type(e).__name__}: {e}); refit it with "
        "covidct ood fit RUN"
    )


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's controller, made once (it scans the loaded libraries)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread() -> Any:
    return _blas_controller().limit(limits=1, user_api="blas")


_CARD_KEYS = {
    "format",
    "method",
    "k",
    "architecture",
    "feature_dim",
    "threshold",
    "percentile",
    "acquisitions",
    "framing",
    "pixels",
    "sources",
    "own_threshold",
    "shift",
}


def _unit(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def ood_scores(method: str, z: np.ndarray, bank: np.ndarray, location: np.ndarray, k: int) -> np.ndarray:
    """The score of standardised features `z`: knn, the cosine distance to the k-th nearest training image;
    mahalanobis, the distance to the training mean under the shrunk precision matrix `bank`."""
    if len(z) == 0:
        return np.zeros(0)
    if method == "knn":
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=min(k, len(bank)), algorithm="brute", metric="cosine").fit(bank)
        dist, _ = nn.kneighbors(_unit(z))
        return dist[:, -1]
    # Sigma = W diag(v) W^T + floor (I - W W^T): the squared distance splits along the axes and the rest
    variances, floor = location[:-1], location[-1]
    proj = z @ bank
    rest = np.maximum((z * z).sum(1) - (proj * proj).sum(1), 0)
    return np.sqrt(rest / floor + (proj * proj / variances).sum(1))


def shrunk_axes(z: np.ndarray, min_variance: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(axes p x r, [shrunk variance along each axis..., floor]) of the Ledoit-Wolf covariance of centred `z`:
    (1 - a) S + a mu I with S the sample covariance, a scikit-learn's shrinkage and mu = trace(S) / p; no variance
    (and no floor) below `min_variance`."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    n, p = z.shape
    shrinkage = float(ledoit_wolf_shrinkage(z, assume_centered=True))
    _, sing, vt = np.linalg.svd(z, full_matrices=False)
    keep = sing > sing.max() * 1e-9 if len(sing) else sing > 0
    sample_var = sing[keep] ** 2 / n
    mu = float((z * z).sum() / (n * p))
    floor = max(shrinkage * mu, 1e-12, min_variance)
    return vt[keep].T, np.append(np.maximum((1 - shrinkage) * sample_var + floor, min_variance), floor)


def fit_detector(
    train: np.ndarray,
    val: np.ndarray,
    architecture: str,
    method: str = "knn",
    percentile: float = DEFAULT_PERCENTILE,
    k: int = DEFAULT_K,
    info: dict[str, Any] | None = None,
    framing: tuple[np.ndarray, np.ndarray] | None = None,
    min_scale: np.ndarray | tuple[float, ...] | None = None,
    pixels: tuple[np.ndarray, np.ndarray] | None = None,
) -> OODDetector:
    """Fit on the training images' features; the threshold is the `percentile` of the validation images' scores
    (never the training images': their own neighbour is themselves). `framing`: the (train, val) images' framing
    statistics, for a framing half (Mahalanobis) whose score is combined with the features' (OODDetector.score).
    `pixels`: the (train, val) images' pixel statistics, for a third half (Mahalanobis), with a framing half only.
    `min_scale`: the smallest spread each feature is standardised by (the framing statistics' RESOLUTION); with it,
    no direction's variance is below 1 after standardising either: a difference under the resolution is noise
    (a source whose images are all framed alike would otherwise flag float rounding)."""
    val = _checked(val, "validation", 1)
    detector = _fitted(
        train,
        architecture,
        method,
        percentile,
        k,
        min_scale,
        None if framing is None else framing[0],
        None if pixels is None else pixels[0],
    )
    raw = detector.half_scores(
        val, *(None if h is None else _checked(h[1], "validation", 1) for h in (framing, pixels))
    )
    return calibrate(detector, raw, info)


def fit_out_of_fold(
    train: np.ndarray,
    groups: np.ndarray,
    architecture: str,
    method: str = "mahalanobis",
    percentile: float = DEFAULT_PERCENTILE,
    info: dict[str, Any] | None = None,
    framing: np.ndarray | None = None,
    pixels: np.ndarray | None = None,
    folds: int = 5,
) -> OODDetector:
    """For images with no validation set of their own (an adapted model's site): the detector fitted on all of
    them, its threshold (and the halves' references) the `percentile` of out-of-fold scores: each group's (patient's)
    images scored by the detector fitted without that group (scikit-learn's GroupKFold), so that the threshold is
    what a new patient of that source scores, not what an image the detector has seen scores."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    if len(groups) != len(train):
        raise ModelError(f"out-of-fold fitting needs a group per image: {len(groups)} groups for {len(train)} images")
    if len(np.unique(groups)) < 2:  # one patient: its images are all there is to hold out
        groups = np.arange(len(train))
    halves = {"features": np.asarray(train), "framing": framing, "pixels": pixels}
    if len(train) < 4:
        raise ModelError(f"an out-of-distribution detector fitted out of fold needs >= 4 images, got {len(train)}")
    raw: dict[str, np.ndarray] = {}
    splitter = GroupKFold(n_splits=min(folds, len(np.unique(groups))))
    for fit, held in splitter.split(train, groups=groups):
        fold = _fitted(
            *_take(halves, fit, ("features",)),
            architecture,
            method,
            percentile,
            DEFAULT_K,
            None,
            *_take(halves, fit, ("framing", "pixels")),
        )
        for name, scores in fold.half_scores(*_take(halves, held, ("features", "framing", "pixels"))).items():
            raw.setdefault(name, np.zeros(len(train)))[held] = scores
    detector = _fitted(train, architecture, method, percentile, DEFAULT_K, None, framing, pixels)
    return calibrate(
        detector, raw, {**(info or {}), "threshold_on": f"out of fold ({splitter.n_splits} folds by group)"}
    )


def _take(halves: dict[str, np.ndarray | None], rows: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray | None]:
    return [None if halves[n] is None else np.asarray(halves[n])[rows] for n in names]


def _checked(values: np.ndarray, what: str, least: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ModelError("the detector's features hold NaN or infinite values (a diverged model?); not fitted")
    if len(values) < least:
        raise ModelError(
            f"an out-of-distribution detector needs >= 2 training and >= 1 validation images, got "
            f"{len(values)} {what} images"
        )
    return values


def _fitted(
    train: np.ndarray,
    architecture: str,
    method: str,
    percentile: float,
    k: int,
    min_scale: np.ndarray | tuple[float, ...] | None,
    framing: np.ndarray | None = None,
    pixels: np.ndarray | None = None,
) -> OODDetector:
    """The detector fitted on the training images (and its halves on theirs), thresholds not yet set (calibrate)."""
    if method not in METHODS:
        raise ModelError(f"out-of-distribution method must be one of {METHODS}, got {method!r}")
    if not 50 <= percentile < 100:
        raise ModelError(f"the detector's percentile must be in [50, 100), got {percentile}")
    train = _checked(train, "training", 2)
    center = train.mean(0)
    scale = np.maximum(train.std(0), 1e-6 * max(1.0, float(np.abs(train).max())))
    if min_scale is not None:
        scale = np.maximum(scale, np.asarray(min_scale, dtype=np.float64))
    z = (train - center) / scale
    if method == "knn":
        bank, location = _unit(z), np.zeros(z.shape[1])
    else:
        bank, location = shrunk_axes(z, 0.0 if min_scale is None else 1.0)
    detector = OODDetector(method, architecture, train.shape[1], center, scale, bank, location, 0.0, percentile, k)
    detector.info = {"n_train": len(train)}
    if framing is not None:
        detector.framing = _fitted(framing, "framing", "mahalanobis", percentile, DEFAULT_K, RESOLUTION)
        if pixels is not None:
            detector.pixels = _fitted(pixels, "pixels", "mahalanobis", percentile, DEFAULT_K, None)
    return detector


def calibrate(detector: OODDetector, raw: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> OODDetector:
    """Set the detector's threshold from held-out images' half scores (OODDetector.half_scores): each half's
    reference is its own percentile, the framing's no less than MIN_FRAMING_REF, the pixel half's put on the two
    halves' footing (as measured: benchmarks/OOD.md); the threshold is the percentile of the combined scores."""

    def at(scores: np.ndarray) -> float:
        return float(np.percentile(scores, detector.percentile))

    if detector.framing is not None:
        detector.framing.threshold = at(raw["framing"])
        detector.refs = (max(at(raw["features"]), 1e-9), max(detector.framing.threshold, MIN_FRAMING_REF))
        if detector.pixels is not None:
            detector.pixels.threshold = at(raw["pixels"])
            two = max(at(OODDetector.combine(replace(detector, pixels=None), raw)), 1e-9)
            detector.pixel_ref = max(detector.pixels.threshold, 1e-9) / two
    scores = detector.combine(raw)
    detector.threshold = at(scores)
    detector.held_out = raw
    detector.info = {
        **(info or {}),
        "n_train": detector.info.get("n_train", 0),
        "n_val": len(scores),
        "val_flagged": float(np.mean(detector.flags(scores))),
    }
    return detector
