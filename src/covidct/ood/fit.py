"""Fitting a model's detector by a DetectorRecipe: on arrays (fit_detector: fitted on the training images' features,
its threshold a percentile of the validation images' scores; fit_out_of_fold for a set with no validation split), and
from a network and two datasets (fit_for_network, fit_by_source); covidct.inference.run_detector does it for a run
folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from covidct.data import ImageDataset
from covidct.errors import ModelError
from covidct.models.hooks import run_over
from covidct.ood.detector import DEFAULT_K, DEFAULT_PERCENTILE, METHODS, MIN_FRAMING_REF, PERCENTILES, OODDetector
from covidct.ood.distances import shrunk_axes, unit_rows
from covidct.ood.features import logits_and_features
from covidct.ood.framing import RESOLUTION
from covidct.ood.image_statistics import IMAGE_STATISTICS, statistics_by_name
from covidct.ood.shift import MIN_REFERENCE, ShiftReference, statistics_matrix

log = logging.getLogger("covidct")
DEFAULT_METHOD = "mahalanobis"  # chosen on held-out sources and framing changes: benchmarks/OOD.md


@dataclass(frozen=True)
class DetectorRecipe:
    """How a detector is fitted (`covidct ood fit`'s --method and --percentile): the method, the percentile of the
    held-out images' scores that becomes its threshold, the neighbours of knn, the smallest spread each feature is
    standardised by (min_scale: the framing half's RESOLUTION; none for the network's features) and the folds of an
    out-of-fold threshold."""

    method: str = DEFAULT_METHOD
    percentile: float = DEFAULT_PERCENTILE
    k: int = DEFAULT_K
    min_scale: tuple[float, ...] | None = None
    folds: int = 5


DEFAULT_RECIPE = DetectorRecipe()
# a set of images as the detector reads them: the network's features alone (N x D), or its halves by name:
# {"features": N x D, "framing": N x 3, "pixels": N x 22} (fit_by_source's also carry "source" and "group")
Arrays: TypeAlias = np.ndarray | dict[str, np.ndarray]


def _halves(x: Arrays) -> dict[str, np.ndarray | None]:
    if isinstance(x, dict):
        return {"features": x["features"], "framing": x.get("framing"), "pixels": x.get("pixels")}
    return {"features": x, "framing": None, "pixels": None}


def _one_pass(net: nn.Module, dataset: Dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(logits N x 2, detector features N x D, {"framing": N x 3, "pixels": N x 22} for what the items carry) of
    every item, one pass."""
    logits, feats, extras = [], [], {}  # type: ignore[var-annotated]
    for batch, (lg, f) in run_over(net, dataset, batch_size, lambda x: logits_and_features(net, x)):
        logits.append(lg.float().cpu().numpy())
        feats.append(f.cpu().numpy())
        for key in IMAGE_STATISTICS:
            if key in batch:
                extras.setdefault(key, []).append(batch[key].numpy())
    if not feats:
        return np.zeros((0, 2)), np.zeros((0, 0)), {}
    return np.concatenate(logits), np.concatenate(feats), {k: np.concatenate(v) for k, v in extras.items()}


def dataset_outputs(net: nn.Module, dataset: Dataset, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(logits N x 2, detector features N x D) of every item of `dataset` (images already transformed), one pass."""
    logits, feats, _ = _one_pass(net, dataset, batch_size)
    return logits, feats


def fit_for_network(
    net: nn.Module,
    architecture: str,
    train: ImageDataset,
    val: ImageDataset,
    recipe: DetectorRecipe = DEFAULT_RECIPE,
    info: dict[str, Any] | None = None,
) -> OODDetector:
    """The detector of `net`, fitted on `train` with its threshold on `val`, one per training source (fit_by_source;
    a source without validation images is thresholded out of fold by its samples' groups: patients)."""
    start = time.perf_counter()
    # features, framing and pixel statistics from one decode of each image (ImageDataset.with_statistics)
    (_, train_feats, tr), (_, val_feats, va) = (
        _one_pass(net, ds.with_statistics(statistics_by_name(IMAGE_STATISTICS)), 32) for ds in (train, val)
    )
    detector = fit_by_source(
        {"features": train_feats, **tr, "source": sample_sources(train.samples), "group": sample_groups(train.samples)},
        {"features": val_feats, **va, "source": sample_sources(val.samples)},
        architecture,
        recipe,
        info,
    )
    if len(val_feats) >= MIN_REFERENCE:  # the batch shift test's reference: the validation images, never training's
        info = {"images": "validation split"}
        detector.reference = ShiftReference.fit(val_feats, statistics_matrix(va), train_feats, info)
    detector.info["fit_seconds"] = round(time.perf_counter() - start, 1)
    log.info(
        "out-of-distribution detector (%s) fitted on %d images in %.0f s; %.1f%% of validation images flagged",
        recipe.method,
        detector.info["n_train"],
        detector.info["fit_seconds"],
        100 * detector.info["val_flagged"],
    )
    return detector


def _source_member(
    name: str,
    part: dict[str, np.ndarray],
    own_val: dict[str, np.ndarray] | None,
    architecture: str,
    recipe: DetectorRecipe,
) -> OODDetector:
    """One source's detector: fitted on `part` and thresholded on its own validation images, or out of fold by
    group when it has none."""
    if own_val is None:
        return fit_out_of_fold(part, part["group"], architecture, recipe, {"source": name})
    return fit_detector(part, own_val, architecture, recipe, {"source": name, "threshold_on": "val"})


def sample_sources(samples: Sequence[Any]) -> list[str]:
    """The training source of each sample, as the detector names it ("train" for a run of one unnamed source)."""
    return [s.source or "train" for s in samples]


def sample_groups(samples: Sequence[Any]) -> list[str]:
    """The patient (group) of each sample, for out-of-fold thresholds; a sample without one is its own."""
    return [s.group or f"image {i}" for i, s in enumerate(samples)]


def fit_by_source(
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    architecture: str,
    recipe: DetectorRecipe = DEFAULT_RECIPE,
    info: dict[str, Any] | None = None,
) -> OODDetector:
    """One detector per training source, in the order the sources first appear in train["source"]; the first's
    own threshold is the unit scores are given in (OODDetector.others). Each is fitted on its source's training
    images ({"features", "framing", "pixels"} arrays, with a "source" and a "group" per image) and thresholded on its
    source's validation images (val["source"]), or out of fold by group when there are none (an adapted model's site:
    every image of it is training); the threshold of the whole is set on all those held-out images
    (_threshold_over_sources)."""
    train = {k: np.asarray(a) for k, a in train.items()}
    val = {k: np.asarray(a) for k, a in val.items()}
    train_sources, val_sources = train["source"], val["source"]
    members, held = [], []  # each source's detector, and the inputs of the images its threshold was set on
    for name in dict.fromkeys(train_sources.tolist()):
        t, v = train_sources == name, val_sources == name
        part = {k: a[t] for k, a in train.items()}
        own = {k: a[v] for k, a in val.items()} if v.any() else None
        held.append(own if own is not None else part)
        members.append(_source_member(name, part, own, architecture, recipe))
    detector = members[0]
    keys = ("source", "n_train", "n_val", "threshold_on")
    per_source = [{k: m.info[k] for k in keys} for m in members]
    if len(members) > 1:
        for part, share in zip(per_source, _threshold_over_sources(members, held, recipe.percentile)):
            part["flagged"] = share  # of its held-out images, by the detector as a whole
    if len(val_sources):
        flagged = float(np.mean(detector.flags(detector.score(val["features"], val["framing"], val["pixels"]))))
    else:  # no validation images (every labelled image trained): the share of the out-of-fold scores flagged
        flagged = detector.info["val_flagged"]
    detector.info = {
        **(info or {}),
        "n_train": len(train_sources),
        "n_val": len(val_sources),
        "val_flagged": flagged,
        **({"per_source": per_source} if len(members) > 1 else {}),
    }
    return detector


def _threshold_over_sources(
    members: list[OODDetector], held: list[dict[str, np.ndarray]], percentile: float
) -> list[float]:
    """The first source's detector takes the others, and the threshold of the whole: the lowest at which no source's
    held-out images flag more than (100 - percentile)%. An image's combined score is the smallest over sources, each
    in units of its own threshold (a source's own score on its held-out images as its threshold was set on them, out
    of fold for a site). Each source's own threshold would flag fewer: an image its own source finds unusual is often
    like another (measured: 1.2% of validation). One percentile over all held-out images pooled flagged the smaller
    source's twice as often as the larger's (COVID-CT validation 10.2% beside a site's 392 images; OOD.md)."""
    pooled = []
    for m, inputs in zip(members, held):
        own = m.combine(m.held_out) / max(m.threshold, 1e-12)  # type: ignore[arg-type]
        theirs = [
            o.combine(o.half_scores(inputs["features"], inputs["framing"], inputs["pixels"])) / max(o.threshold, 1e-12)
            for o in members
            if o is not m
        ]
        pooled.append(np.minimum.reduce([own, *theirs]))
    cut = max(float(np.percentile(p, percentile)) for p in pooled)
    first = members[0]
    first.others, first.own_threshold, first.threshold = members[1:], first.threshold, first.threshold * cut
    return [float(np.mean(p > cut)) for p in pooled]


def fit_detector(
    train: Arrays,
    val: Arrays,
    architecture: str,
    recipe: DetectorRecipe = DEFAULT_RECIPE,
    info: dict[str, Any] | None = None,
) -> OODDetector:
    """Fit on the training images' features; the threshold is the recipe's percentile of the validation images'
    scores (never the training images': their own neighbour is themselves). With a "framing" array (train and val:
    the images' framing statistics), a framing half (Mahalanobis) whose score is combined with the features'
    (OODDetector.score); with "pixels" too (the images' pixel statistics), a third half (Mahalanobis). The recipe's
    `min_scale`: the smallest spread each feature is standardised by (the framing statistics' RESOLUTION); with it,
    no direction's variance is below 1 after standardising either: a difference under the resolution is noise (a
    source whose images are all framed alike would otherwise flag float rounding)."""
    t, v = _halves(train), _halves(val)
    features = _checked(v["features"], "validation", 1)
    detector = _fitted(t["features"], architecture, recipe, t["framing"], t["pixels"])
    halves = [None if t[h] is None else _checked(_given(v, h), "validation", 1) for h in ("framing", "pixels")]
    return calibrate(detector, detector.half_scores(features, *halves), info)


def _given(arrays: dict[str, np.ndarray | None], half: str) -> np.ndarray:
    if arrays[half] is None:
        raise ModelError(f"the detector's {half} half was fitted on training images, but no validation {half} given")
    return arrays[half]  # type: ignore[return-value]


def fit_out_of_fold(
    train: Arrays,
    groups: np.ndarray,
    architecture: str,
    recipe: DetectorRecipe = DEFAULT_RECIPE,
    info: dict[str, Any] | None = None,
) -> OODDetector:
    """For images with no validation set of their own (an adapted model's site): the detector fitted on all of
    them, its threshold (and the halves' references) the recipe's percentile of out-of-fold scores: each group's
    (patient's) images scored by the detector fitted without that group (scikit-learn's GroupKFold, recipe.folds),
    so that the threshold is what a new patient of that source scores, not what an image the detector has seen
    scores."""
    from sklearn.model_selection import GroupKFold

    halves = _halves(train)
    features = np.asarray(halves["features"])
    groups = np.asarray(groups)
    if len(groups) != len(features):
        raise ModelError(
            f"out-of-fold fitting needs a group per image: {len(groups)} groups for {len(features)} images"
        )
    if len(np.unique(groups)) < 2:  # one patient: its images are all there is to hold out
        groups = np.arange(len(features))
    if len(features) < 4:
        raise ModelError(f"an out-of-distribution detector fitted out of fold needs >= 4 images, got {len(features)}")
    raw: dict[str, np.ndarray] = {}
    splitter = GroupKFold(n_splits=min(recipe.folds, len(np.unique(groups))))
    for fit, held in splitter.split(features, groups=groups):
        fold = _fitted(features[fit], architecture, recipe, *_take(halves, fit, ("framing", "pixels")))
        for name, scores in fold.half_scores(*_take(halves, held, ("features", "framing", "pixels"))).items():
            raw.setdefault(name, np.zeros(len(features)))[held] = scores
    detector = _fitted(features, architecture, recipe, halves["framing"], halves["pixels"])
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
    recipe: DetectorRecipe,
    framing: np.ndarray | None = None,
    pixels: np.ndarray | None = None,
) -> OODDetector:
    """The detector fitted on the training images (and its halves on theirs), thresholds not yet set (calibrate)."""
    method, percentile = recipe.method, recipe.percentile
    if method not in METHODS:
        raise ModelError(f"out-of-distribution method must be one of {METHODS}, got {method!r}")
    if not PERCENTILES[0] <= percentile < PERCENTILES[1]:
        low, high = PERCENTILES
        raise ModelError(f"the detector's percentile must be in [{low:g}, {high:g}), got {percentile}")
    train = _checked(train, "training", 2)
    center = train.mean(0)
    scale = np.maximum(train.std(0), 1e-6 * max(1.0, float(np.abs(train).max())))
    if recipe.min_scale is not None:
        scale = np.maximum(scale, np.asarray(recipe.min_scale, dtype=np.float64))
    z = (train - center) / scale
    if method == "knn":
        bank, location = unit_rows(z), np.zeros(z.shape[1])
    else:
        bank, location = shrunk_axes(z, 0.0 if recipe.min_scale is None else 1.0)
    detector = OODDetector(
        method, architecture, train.shape[1], center, scale, bank, location, 0.0, percentile, recipe.k
    )
    detector.info = {"n_train": len(train)}
    if framing is not None:
        half = DetectorRecipe("mahalanobis", percentile, min_scale=RESOLUTION)
        detector.framing = _fitted(framing, "framing", half)
        if pixels is not None:
            detector.pixels = _fitted(pixels, "pixels", DetectorRecipe("mahalanobis", percentile))
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
