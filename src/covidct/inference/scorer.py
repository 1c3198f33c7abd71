"""The scorer: the fine-tuned network with the ImageNet probe blended in (when the model has one) as one module, and
the out-of-distribution detector's features taken from the same pass. What predict, evaluate, serve, adapt's
detector fit and the ONNX graph run (LoadedModel.scoring() gives it with batch norm folded; export writes it);
Grad-CAM explains `network` (LoadedModel.heat_map_explains says so)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from covidct.ood.features import logits_and_features


class Scorer(nn.Module):
    """forward(x): the logits (blended with the probe's log-odds when there is a probe); with_features(x): those
    logits and the detector's features of `network`, one pass."""

    def __init__(self, network: nn.Module, probe: Any = None) -> None:
        super().__init__()
        self.network, self.probe = network, probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        return logits if self.probe is None else self.probe.blend(logits, x)

    def with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the probe reads through its own taps, never the network's (untapped)
        return logits_and_features(self.network, x, self)


class WithFeatures(nn.Module):
    """A Scorer whose forward gives (logits, detector features): the two outputs of the ONNX graph."""

    def __init__(self, scorer: Scorer) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scorer.with_features(x)
