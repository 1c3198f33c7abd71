"""Batch norm folded for scoring (covidct.inference.fold): the same logits, no batch norm left where a convolution
precedes it, the original network untouched, and a layout the rule misreads is caught by the check."""

import torch
from torch import nn

from covidct.inference.fold import fold_batch_norm
from covidct.models import create_model


def with_running_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with statistics far from (0, 1), so a fold that forgets one of them shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def test_folded_networks_give_the_same_logits_without_batch_norm():
    norms = lambda m: sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    for name, left in (("efficientnet_lite0", 0), ("timm:resnet10t", 1)):  # resnet10t: its deep stem ends in a conv
        model = with_running_stats(create_model(name, pretrained=False)[0])
        before = {k: v.clone() for k, v in model.state_dict().items()}
        folded = fold_batch_norm(model, 64)
        assert folded is not model
        assert norms(model) > 10 and norms(folded) == left
        x = torch.randn(3, 3, 64, 64)
        with torch.no_grad():
            want, got = model(x), folded(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched


class NormFirst(nn.Module):
    """Registers conv then batch norm, but normalises before convolving: the registration-order rule misreads it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.bn(x)).mean((2, 3)))


def test_a_misread_layout_is_not_folded():
    model = with_running_stats(NormFirst())
    assert fold_batch_norm(model, 16) is model
