"""Domain-adversarial training (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016): a small head predicts
which source an image comes from, from the same pooled features the classifier reads, through a gradient-reversal
layer. The head learns to tell the sources apart; the reversed gradient pushes the backbone towards features it
cannot tell apart, so what is left to separate COVID from non-COVID is less the source (DeGrave et al. 2021 found
models learning the source, not the disease).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:  # type: ignore[override]
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """The identity forwards; the gradient times -strength backwards."""
    return _Reverse.apply(x, strength)


def reversal_strength(progress: float, gamma: float = 10.0) -> float:
    """Ganin et al.'s schedule, 2 / (1 + exp(-gamma p)) - 1: 0 at the start of training (while the domain head is
    still random its gradient is noise), rising to about 1 by a third of the way (p = fraction of training done)."""
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DomainHead(nn.Module):
    """Features -> gradient reversal -> Linear -> ReLU -> Dropout -> Linear -> one logit per source."""

    def __init__(self, n_features: int, n_domains: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, n_domains)
        )

    def forward(self, features: torch.Tensor, strength: float) -> torch.Tensor:
        return self.net(reverse_gradient(features.flatten(1).float(), strength))
