"""Fitting a model's detector on its training images (threshold on its validation images), from a network and two
datasets; covidct.inference.run_detector does it for a run folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from covidct.data import ImageDataset
from covidct.models.hooks import run_over
from covidct.ood.detector import DEFAULT_PERCENTILE, OODDetector, fit_detector, fit_out_of_fold
from covidct.ood.features import logits_and_features
from covidct.ood.image_statistics import IMAGE_STATISTICS, statistics_by_name
from covidct.ood.shift import MIN_REFERENCE, ShiftReference, statistics_matrix

log = logging.getLogger("covidct")
DEFAULT_METHOD = "mahalanobis"  # chosen on held-out sources and framing changes: benchmarks/OOD.md


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
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    info: dict[str, Any] | None = None,
    groups: Sequence[Any] | None = None,
) -> OODDetector:
    """The detector of `net`, fitted on `train` with its threshold on `val`, one per training source (fit_by_source;
    `groups`: a patient per training image, for a source without validation images; default the samples' groups)."""
    start = time.perf_counter()
    # features, framing and pixel statistics from one decode of each image (ImageDataset.with_statistics)
    (_, train_feats, tr), (_, val_feats, va) = (
        _one_pass(net, ds.with_statistics(statistics_by_name(IMAGE_STATISTICS)), 32) for ds in (train, val)
    )
    groups = sample_groups(train.samples) if groups is None else groups
    detector = fit_by_source(
        {"features": train_feats, **tr},
        {"features": val_feats, **va},
        sample_sources(train.samples),
        sample_sources(val.samples),
        groups,
        architecture,
        method,
        percentile,
        info,
    )
    if len(val_feats) >= MIN_REFERENCE:  # the batch shift test's reference: the validation images, never training's
        info = {"images": "validation split"}
        detector.reference = ShiftReference.fit(val_feats, statistics_matrix(va), train_feats, info)
    detector.info["fit_seconds"] = round(time.perf_counter() - start, 1)
    log.info(
        "out-of-distribution detector (%s) fitted on %d images in %.0f s; %.1f%% of validation images flagged",
        method,
        detector.info["n_train"],
        detector.info["fit_seconds"],
        100 * detector.info["val_flagged"],
    )
    return detector


def _source_member(
    name: str,
    part: dict[str, np.ndarray],
    own_val: dict[str, np.ndarray] | None,
    groups: np.ndarray,
    architecture: str,
    method: str,
    percentile: float,
) -> OODDetector:
    """One source's detector: fitted on `part` and thresholded on its own validation images, or out of fold by
    group when it has none."""
    if own_val is None:
        info = {"source": name}
        return fit_out_of_fold(
            part["features"], groups, architecture, method, percentile, info, part["framing"], part["pixels"]
        )
    return fit_detector(
        part["features"],
        own_val["features"],
        architecture,
        method,
        percentile,
        info={"source": name, "threshold_on": "val"},
        framing=(part["framing"], own_val["framing"]),
        pixels=(part["pixels"], own_val["pixels"]),
    )


def sample_sources(samples: Sequence[Any]) -> list[str]:
    """The training source of each sample, as the detector names it ("train" for a run of one unnamed source)."""
    return [s.source or "train" for s in samples]


def sample_groups(samples: Sequence[Any]) -> list[str]:
    """The patient (group) of each sample, for out-of-fold thresholds; a sample without one is its own."""
    return [s.group or f"image {i}" for i, s in enumerate(samples)]


def fit_by_source(
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    train_sources: Sequence[str],
    val_sources: Sequence[str],
    groups: Sequence[Any],
    architecture: str,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    info: dict[str, Any] | None = None,
) -> OODDetector:
    """One detector per training source, in the order the sources first appear in `train_sources`; the first's
    own threshold is the unit scores are given in (OODDetector.others). Each is fitted on its source's training
    images ({"features", "framing", "pixels"} arrays) and thresholded on its source's validation images, or out of
    fold by group when there are none (an adapted model's site: every image of it is training); the threshold of the
    whole is set on all those held-out images (_threshold_over_sources)."""
    train_sources, val_sources, groups = np.asarray(train_sources), np.asarray(val_sources), np.asarray(groups)
    members, held = [], []  # each source's detector, and the inputs of the images its threshold was set on
    for name in dict.fromkeys(train_sources.tolist()):
        t, v = train_sources == name, val_sources == name
        part = {k: a[t] for k, a in train.items()}
        own = {k: a[v] for k, a in val.items()} if v.any() else None
        held.append(own if own is not None else part)
        members.append(_source_member(name, part, own, groups[t], architecture, method, percentile))
    detector = members[0]
    keys = ("source", "n_train", "n_val", "threshold_on")
    per_source = [{k: m.info[k] for k in keys} for m in members]
    if len(members) > 1:
        for part, share in zip(per_source, _threshold_over_sources(members, held, percentile)):
            part["flagged"] = share  # of its held-out images, by the detector as a whole
    flagged = detector.flags(detector.score(val["features"], val["framing"], val["pixels"]))
    detector.info = {
        **(info or {}),
        "n_train": len(train_sources),
        "n_val": len(val_sources),
        "val_flagged": float(np.mean(flagged)) if len(flagged) else 0.0,
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
