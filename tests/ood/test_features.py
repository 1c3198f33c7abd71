"""The detector's features as covidct computes them: per-channel statistics of each stage, in the forward pass."""

import pytest
import torch

from covidct.models import create_model
from covidct.ood.features import channel_mean_std, logits_and_features


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 4, 1, 1), (1, 6, 2, 3)])
def test_channel_statistics_equal_torchs_mean_and_population_spread(layout, shape):
    torch.manual_seed(0)
    a = (torch.randn(shape) * 3 + 10).contiguous(memory_format=layout)
    mean, spread = channel_mean_std(a)
    torch.testing.assert_close(mean, a.mean((2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(spread, a.std((2, 3), correction=0), rtol=1e-4, atol=1e-5)


def test_a_saturated_channel_has_no_spread_not_a_cancellation_residue():
    a = torch.full((2, 3, 14, 14), 6.0).contiguous(memory_format=torch.channels_last)  # ReLU6 at its ceiling
    assert channel_mean_std(a)[1].abs().max().item() < 1e-5


def test_features_do_not_depend_on_the_memory_layout_of_the_network():
    torch.manual_seed(0)
    net = create_model("efficientnet_lite0", pretrained=False)[0].eval()
    x = torch.randn(2, 3, 64, 64)
    logits, feats = logits_and_features(net, x)
    logits_cl, feats_cl = logits_and_features(net.to(memory_format=torch.channels_last), x)
    torch.testing.assert_close(feats_cl, feats, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits_cl, logits, rtol=1e-4, atol=1e-4)
