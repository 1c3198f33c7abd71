"""A linear head fitted on frozen features: the logistic regression that adaptation (`covidct adapt`) and the linear
probe before fine-tuning (LP-FT, `--lp-ft`) both fit, and its folding into the network's own 2-class head.
scikit-learn does the fitting; this is the glue."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from covidct.models.hooks import activations, run_over


def score_of(logits: torch.Tensor) -> torch.Tensor:
    """logits -> score, its one home: the probability of the positive class (the second) of N x 2 logits, in fp32
    (what every path reports, compares with a threshold and stores)."""
    return logits.float().softmax(1)[:, 1]


HEAD_C = 0.1  # inverse L2 strength of the logistic regression on standardised features (few images: strong)


def fit_head(x: np.ndarray, y: np.ndarray, c: float = HEAD_C, standardise: bool = True) -> tuple[np.ndarray, float]:
    """(weights, bias) of a class-balanced logistic regression on standardised features, folded back to the raw
    features: logit = x @ weights + bias. Pure. standardise=False fits the raw features: a head that is fine-tuned
    afterwards must not carry the large weights that folding puts on nearly constant features (they blow up as
    soon as fine-tuning moves those features)."""
    from sklearn.linear_model import LogisticRegression

    weights, bias, _ = fit_folded(LogisticRegression(C=c, max_iter=2000, class_weight="balanced"), x, y, standardise)
    return weights, bias


def fit_folded(estimator: Any, x: np.ndarray, y: np.ndarray, standardise: bool = True) -> tuple[np.ndarray, float, Any]:
    """(weights, bias, the fitted estimator) of a scikit-learn linear classifier fitted on standardised features and
    folded back to the raw features: logit = x @ weights + bias."""
    mean, std = (x.mean(0), np.maximum(x.std(0), 1e-6)) if standardise else (np.zeros(x.shape[1]), np.ones(x.shape[1]))
    estimator.fit((x - mean) / std, y)
    weights = estimator.coef_[0] / std
    return weights, float(estimator.intercept_[0] - (mean * weights).sum()), estimator


def head_scores(weights: np.ndarray, bias: float, x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x @ weights + bias, -50, 50)))


def set_linear_head(head: nn.Linear, weights: np.ndarray, bias: float) -> None:
    """Write a regression into a 2-class linear head: softmax([0, z])[1] = sigmoid(z), so row 0 is zero and row 1
    the regression."""
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1] = torch.as_tensor(weights, dtype=head.weight.dtype)
        head.bias[1] = float(bias)


def head_inputs(net: nn.Module, head: nn.Module, dataset: Dataset, batch_size: int = 32) -> np.ndarray:
    """What `head` reads (the pooled features, N x D) for every item of `dataset`, in eval mode, one pass. Not
    ood.fit.dataset_outputs: that installs the detector's feature hooks on the network for good, and the linear
    probe's network is trained next; this hook is removed after the pass."""
    with activations(head, "input") as seen:
        for _ in run_over(net, dataset, batch_size):
            pass
    return torch.cat(seen).numpy() if seen else np.zeros((0, getattr(head, "in_features", 0)))
