"""Batch norm folded into the convolution before it, for scoring only: in eval mode a BatchNorm2d is a per-channel
affine map, so conv -> BN equals one convolution with scaled weights and a bias. On this project's CPU batch norm
was about a quarter of efficientnet_lite0's forward time (benchmarks/OOD.md, the profile of the fitting time).

The folded network is a copy: the loaded module keeps its own weights and layout, because export, adaptation and
Grad-CAM read or write them (a folded state dict has no batch-norm entries and would not load back). The copy is
checked against the original on one random batch and not used when they disagree.

Why by hand: torch.fx's fuse and torch.ao's fuse_modules need a traceable graph or module names listed per
architecture; timm's BatchNormAct2d (batch norm + activation in one module) is neither. The rule here is local:
a Conv2d directly followed, in its parent's registration order, by a BatchNorm2d of the same width (timm's blocks,
torchvision's ResNet, VGG-bn and Conv2dNormActivation are written so), and the check catches any layout it
misreads."""

from __future__ import annotations

import copy
import itertools
import logging

import torch
from torch import nn

log = logging.getLogger("covidct")
FOLD_TOLERANCE = 1e-3  # largest relative difference of the logits allowed between folded and original


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What replaces a folded batch norm: nothing (nn.BatchNorm2d) or its activation (timm's BatchNormAct2d, whose
    forward is batch norm, then drop, then act); None for a subclass whose forward is not known."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop"):
        return nn.Sequential(bn.drop, bn.act)
    return None


@torch.no_grad()
def fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv's weights and bias absorb bn (eval mode: running statistics). In place."""
    scale = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(
        bn.running_var + bn.eps
    )
    shift = bn.bias if bn.bias is not None else torch.zeros_like(scale)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.num_features == conv.out_channels
        and bn.running_mean is not None
        and _after_norm(bn) is not None
    )


def fold_batch_norm(model: nn.Module, input_size: int) -> nn.Module:
    """A copy of `model` (eval mode) with every conv -> batch norm pair folded; `model` itself when nothing folds or
    the copy's logits differ from the original's on a random batch (then a warning says so)."""
    model.eval()
    folded = copy.deepcopy(model)
    count = 0
    for parent in list(folded.modules()):
        names = list(parent._modules)
        for first, second in itertools.pairwise(names):
            conv, bn = parent._modules[first], parent._modules[second]
            if conv is not None and bn is not None and _foldable(conv, bn):
                fold_pair(conv, bn)  # type: ignore[arg-type]
                parent._modules[second] = _after_norm(bn)  # type: ignore[arg-type]
                count += 1
    if count == 0:
        return model
    device = next(model.parameters()).device
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        want, got = model(x).float(), folded(x).float()
    if not torch.allclose(got, want, rtol=FOLD_TOLERANCE, atol=FOLD_TOLERANCE * float(want.abs().max())):
        log.warning(
            "batch norm not folded for scoring: the folded %s differs from the original by %.2e",
            type(model).__name__,
            float((got - want).abs().max()),
        )
        return model
    return folded
