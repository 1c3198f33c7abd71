"""What the out-of-distribution detector looks at, taken in the classifier's own forward pass: per stage of the
backbone, the mean and the spread of each channel's activations (feature statistics: they describe texture, noise,
contrast and framing, what differs between scanners and sources), and the pooled features the head reads (what the
classifier decides on). One pass gives the logits and these features, so the check costs almost nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from covidct.models import head_module


def stages(model: nn.Module) -> list[nn.Module]:
    """The backbone's stages in order: timm's `blocks`, torchvision's `features` (VGG, DenseNet) or ResNet's layers."""
    if isinstance(getattr(model, "blocks", None), nn.Sequential):
        return list(model.blocks)
    if isinstance(getattr(model, "features", None), nn.Sequential):
        return [m for m in model.features if isinstance(m, nn.Module) and any(True for _ in m.parameters())]
    layers = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(m, nn.Module) for m in layers):
        return layers  # type: ignore[return-value]
    from covidct.errors import ModelError

    raise ModelError(f"{type(model).__name__}: no stages (blocks, features or layer1-4) to read features from")


class FeatureTaps:
    """Forward hooks on the stages and on the head's input; `with FeatureTaps(model) as taps: logits = model(x)`,
    then `taps.features()` is N x D (float32), the same layout for every call."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._stats: list[torch.Tensor] = []
        self._pooled: torch.Tensor | None = None
        self._hooks: list = []

    def __enter__(self) -> FeatureTaps:
        for stage in stages(self.model):
            self._hooks.append(stage.register_forward_hook(self._keep_stats))
        head = head_module(self.model)
        if head is None:
            from covidct.errors import ModelError

            raise ModelError(f"{type(self.model).__name__}: no classification head found to read features from")
        self._hooks.append(head.register_forward_pre_hook(self._keep_pooled))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _keep_stats(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        a = output.float()
        if a.dim() == 4:  # the spread with correction 0: a 1 x 1 map (small inputs) has spread 0, not NaN
            self._stats += [a.mean((2, 3)), a.std((2, 3), correction=0)]

    def _keep_pooled(self, module: nn.Module, inputs: tuple) -> None:
        self._pooled = inputs[0].float().flatten(1)

    def features(self) -> torch.Tensor:
        if self._pooled is None:
            raise RuntimeError("FeatureTaps.features() before a forward pass")
        out = torch.cat([*self._stats, self._pooled], 1)
        self._stats, self._pooled = [], None
        return out


@torch.no_grad()
def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, detector features) of a batch in one forward pass."""
    with FeatureTaps(model) as taps:
        logits = model(x)
        return logits, taps.features()
