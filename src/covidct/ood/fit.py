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

from covidct.ood.detector import DEFAULT_PERCENTILE, OODDetector, fit_detector
from covidct.ood.features import logits_and_features

log = logging.getLogger("covidct")
DEFAULT_METHOD = "mahalanobis"  # chosen on held-out sources and framing changes: benchmarks/OOD.md


@torch.no_grad()
def dataset_outputs(net: nn.Module, dataset: Dataset, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(logits N x 2, detector features N x D) of every item of `dataset` (images already transformed), one pass."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    logits, feats = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
            lg, f = logits_and_features(net, batch["image"].to(device))
            logits.append(lg.float().cpu().numpy())
            feats.append(f.cpu().numpy())
    finally:
        net.train(was_training)
    if not feats:
        return np.zeros((0, 2)), np.zeros((0, 0))
    return np.concatenate(logits), np.concatenate(feats)


def dataset_features(net: nn.Module, dataset: Dataset, batch_size: int = 32) -> np.ndarray:
    """Detector features (N x D) of every item of `dataset`."""
    return dataset_outputs(net, dataset, batch_size)[1]


def dataset_framing(dataset: Any) -> np.ndarray:
    """Framing statistics (covidct.data.framing) of every image of an ImageDataset as decoded, before its
    transform: what the training loop already decoded is not decoded again."""
    from covidct.data.framing import framing_of

    return framing_of(dataset.image(i) for i in range(len(dataset)))


def fit_for_network(
    net: nn.Module,
    architecture: str,
    train: Dataset,
    val: Dataset,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    info: dict[str, Any] | None = None,
) -> OODDetector:
    start = time.perf_counter()
    framing = (dataset_framing(train), dataset_framing(val))
    detector = fit_detector(dataset_features(net, train), dataset_features(net, val), architecture, method,
                            percentile, info=info, framing=framing)  # fmt: skip
    detector.info["fit_seconds"] = round(time.perf_counter() - start, 1)
    log.info(
        "out-of-distribution detector (%s) fitted on %d images in %.0f s; %.1f%% of validation images flagged",
        method, detector.info["n_train"], detector.info["fit_seconds"], 100 * detector.info["val_flagged"],
    )  # fmt: skip
    return detector
