"""Fitting a run's ImageNet probe (covidct.inference.imagenet_probe) at the end of training: the frozen starting
network's features of the training images (no augmentation), a logistic regression with its strength chosen by
cross-validation on those images alone (scikit-learn's LogisticRegressionCV), folded into one linear layer."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from covidct.inference.imagenet_probe import ImageNetProbe, stage_mean_indices
from covidct.models.hooks import run_over

log = logging.getLogger("covidct")
PROBE_CS = tuple(float(c) for c in np.logspace(-4, 0, 9))  # inverse L2 strengths tried by cross-validation
PROBE_FOLDS = 5


def fit_regression(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, dict[str, Any]] | None:
    """(weights, bias, what was chosen) of a logistic regression on standardised features, folded back to the raw
    features (logit = x @ weights + bias), its C chosen by stratified k-fold AUC; None when a class has fewer than
    two images (nothing to cross-validate). Pure."""
    from sklearn.linear_model import LogisticRegressionCV

    from covidct.models.head import fit_folded

    folds = min(PROBE_FOLDS, int(np.bincount(y, minlength=2).min()))
    if folds < 2 or len(np.unique(y)) < 2:
        return None
    lr = LogisticRegressionCV(Cs=list(PROBE_CS), cv=folds, scoring="roc_auc", max_iter=10000)
    with warnings.catch_warnings():  # scikit-learn 1.9 announces 1.10's changed defaults; nothing here depends on them
        warnings.simplefilter("ignore", FutureWarning)
        weights, bias, lr = fit_folded(lr, x, y)
    cv_auc = float(np.max(np.mean(lr.scores_[1], axis=0)))
    return weights, bias, {"C": float(lr.C_[0]), "cv_auc": cv_auc}


def probe_features(probe: ImageNetProbe, dataset: Dataset, batch_size: int = 32) -> np.ndarray:
    """The probe's features (N x D) of every item of `dataset`, its frozen network in eval mode."""
    out = [f.numpy() for _, f in run_over(probe.net, dataset, batch_size, probe.features)]
    return np.concatenate(out) if out else np.zeros((0, len(probe.keep)))


def fit_probe(
    net: nn.Module, input_size: int, train: Dataset, labels: np.ndarray, architecture: str, share: float
) -> ImageNetProbe | None:
    """The probe of the frozen `net` (the run's starting network) on `train` (under the evaluation transform)."""
    from covidct.inference.load import inference_ready

    start = time.perf_counter()
    net = inference_ready(net)
    probe = ImageNetProbe(net, stage_mean_indices(net, input_size), share)
    fitted = fit_regression(probe_features(probe, train), labels)
    if fitted is None:
        log.warning("no ImageNet probe: a class has fewer than 2 training images")
        return None
    weights, bias, chosen = fitted
    with torch.no_grad():
        probe.linear.weight.copy_(torch.as_tensor(weights, dtype=torch.float32)[None])
        probe.linear.bias.fill_(bias)
    probe.info = {
        "architecture": architecture,
        "stages": "channel means of the last 4",
        "n_train": len(labels),
        **chosen,
        "fit_seconds": round(time.perf_counter() - start, 1),
    }
    log.info(
        "ImageNet probe: C %.4g (cross-validated AUC %.3f on the training images), share %.2f, %.0f s",
        chosen["C"],
        chosen["cv_auc"],
        share,
        probe.info["fit_seconds"],
    )
    return probe
