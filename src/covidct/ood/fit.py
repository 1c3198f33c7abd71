"""Fitting a model's detector on its training images (threshold on its validation images), from a network and two
datasets; covidct.inference.ood does it for a run folder."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from covidct.data import ImageDataset
from covidct.ood.detector import DEFAULT_PERCENTILE, OODDetector, fit_detector
from covidct.ood.features import logits_and_features

log = logging.getLogger("covidct")
DEFAULT_METHOD = "mahalanobis"  # chosen on held-out sources and framing changes: benchmarks/OOD.md


@torch.no_grad()
def _one_pass(net: nn.Module, dataset: Dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(logits N x 2, detector features N x D, {"framing": N x 3, "pixels": N x 22} for what the items carry) of
    every item, one pass."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    logits, feats, extras = [], [], {}  # type: ignore[var-annotated]
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
            lg, f = logits_and_features(net, batch["image"].to(device))
            logits.append(lg.float().cpu().numpy())
            feats.append(f.cpu().numpy())
            for key in ("framing", "pixels"):
                if key in batch:
                    extras.setdefault(key, []).append(batch[key].numpy())
    finally:
        net.train(was_training)
    if not feats:
        return np.zeros((0, 2)), np.zeros((0, 0)), {}
    return np.concatenate(logits), np.concatenate(feats), {k: np.concatenate(v) for k, v in extras.items()}


def dataset_outputs(net: nn.Module, dataset: Dataset, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(logits N x 2, detector features N x D) of every item of `dataset` (images already transformed), one pass."""
    logits, feats, _ = _one_pass(net, dataset, batch_size)
    return logits, feats


def dataset_features(net: nn.Module, dataset: Dataset, batch_size: int = 32) -> np.ndarray:
    """Detector features (N x D) of every item of `dataset`."""
    return dataset_outputs(net, dataset, batch_size)[1]


def fit_for_network(
    net: nn.Module,
    architecture: str,
    train: ImageDataset,
    val: ImageDataset,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    info: dict[str, Any] | None = None,
    pixels: bool = True,
) -> OODDetector:
    """The detector of `net`, fitted on `train` with its threshold on `val`; `pixels`: with the pixel half."""
    start = time.perf_counter()
    # features, framing and pixel statistics from one decode of each image (ImageDataset.with_framing)
    (_, train_feats, tr), (_, val_feats, va) = (_one_pass(net, ds.with_framing(pixels), 32) for ds in (train, val))
    detector = fit_detector(train_feats, val_feats, architecture, method, percentile, info=info,
                            framing=(tr["framing"], va["framing"]),
                            pixels=(tr["pixels"], va["pixels"]) if pixels else None)  # fmt: skip
    detector.info["fit_seconds"] = round(time.perf_counter() - start, 1)
    log.info(
        "out-of-distribution detector (%s) fitted on %d images in %.0f s; %.1f%% of validation images flagged",
        method, detector.info["n_train"], detector.info["fit_seconds"], 100 * detector.info["val_flagged"],
    )  # fmt: skip
    return detector
