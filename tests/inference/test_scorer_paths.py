"""The faster paths of scoring give the numbers of the paths they replace: the ImageNet probe reading only the stage
means it needs (and stopping after its last stage), and an ONNX graph of the blended network whose detector features
hold the fine-tuned network's alone."""

import pytest
import torch

from covidct.inference.imagenet_probe import ImageNetProbe, stage_mean_indices
from covidct.inference.scorer import Scorer, WithFeatures
from covidct.models import create_model
from covidct.ood.features import FeatureTaps, logits_and_features

SIZE = 64


def random_network(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net, _ = create_model(name, pretrained=False)
    return net.eval()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "timm:resnet10t"])
def test_probe_reads_the_same_stage_means_as_the_feature_taps(name):
    net = random_network(name, 0)
    probe = ImageNetProbe(net, stage_mean_indices(net, SIZE), 0.25)
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad(), FeatureTaps(net) as taps:
        net(x)
        want = taps.features()[:, probe.keep]
        got = probe.features(x)
    assert got.shape == want.shape and torch.equal(got, want)


def test_the_probe_leaves_nothing_in_the_fine_tuned_networks_taps():
    """The probe's stages carry the detector's hooks once its loader has looked at them; run inside the
    fine-tuned network's taps (the ONNX graph's second output), they must add nothing to its features."""
    fine_tuned, frozen = random_network("efficientnet_lite0", 1), random_network("efficientnet_lite0", 2)
    probe = ImageNetProbe(frozen, stage_mean_indices(frozen, SIZE), 0.25)
    with torch.no_grad(), FeatureTaps(frozen) as taps:  # installs the hooks on the frozen network's stages
        frozen(torch.zeros(1, 3, SIZE, SIZE))
        taps.features()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits, features = WithFeatures(Scorer(fine_tuned, probe))(x)
        plain_logits, plain_features = logits_and_features(fine_tuned, x)
    assert features.shape == plain_features.shape and torch.equal(features, plain_features)
    assert torch.allclose(logits, probe.blend(plain_logits, x))
