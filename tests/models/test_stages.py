"""Backbones declare their stages where they are registered (timm's feature_info is the model): a network whose
stages have names of its own works for the detector's features and adaptation's tail with no other change, and a
declared stage that is not there is refused at build."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from covidct.data.preprocessing import Preprocessing
from covidct.errors import ModelError
from covidct.models import BackboneSpec, backbone_stages, create_model, register_backbone, registry
from covidct.ood.features import FeatureTaps


class OddNet(nn.Module):
    """Stages named as no usual rule knows them."""

    def __init__(self) -> None:
        super().__init__()
        self.entry = nn.Conv2d(3, 4, 3, stride=2)
        self.trunk_a = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2), nn.ReLU())
        self.trunk_b = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.trunk_b(self.trunk_a(self.entry(x)))).flatten(1))


@pytest.fixture
def odd_backbones():
    names = ("test_odd", "test_odd_wrong")
    small = Preprocessing.for_input(64)
    odd = BackboneSpec("test_odd", weights="none", head="fc", preprocessing=small, stages=("trunk_a", "trunk_b"))
    register_backbone(odd)(lambda pretrained, weights: OddNet())
    wrong = BackboneSpec("test_odd_wrong", weights="none", head="fc", preprocessing=small, stages=("trunk_c",))
    register_backbone(wrong)(lambda pretrained, weights: OddNet())
    yield names
    for name in names:
        registry._REGISTRY.pop(name, None)


def test_declared_stages_are_what_the_detector_reads(odd_backbones):
    model, _ = create_model("test_odd", pretrained=False)
    assert backbone_stages(model) == [model.trunk_a, model.trunk_b]
    with torch.no_grad(), FeatureTaps(model) as taps:
        logits = model(torch.zeros(2, 3, 64, 64))
        features = taps.features()
    assert logits.shape == (2, 2)  # the head replaced by a 2-class one
    assert features.shape == (2, 2 * (6 + 8) + 8)  # each stage's channel means and spreads, then the pooled


def test_a_declared_stage_that_is_not_there_is_refused_at_build(odd_backbones):
    with pytest.raises(ModelError, match="declares a stage 'trunk_c'"):
        create_model("test_odd_wrong", pretrained=False)


def test_undeclared_stages_are_found_by_the_usual_names_or_refused_saying_how_to_declare():
    lite, _ = create_model("efficientnet_lite0", pretrained=False)
    assert backbone_stages(lite) == list(lite.blocks)
    with pytest.raises(ModelError, match="declare them where the backbone is registered"):
        backbone_stages(OddNet())
