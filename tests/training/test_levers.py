"""The generalisation levers of the training step: mixup; the retired domain-adversarial head."""

import pytest
import torch
import torch.nn.functional as F

from covidct.config import TrainConfig
from covidct.errors import ConfigError
from covidct.models import create_model
from covidct.training.module import Classifier, training_card

PRE = {"resize": 40, "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}


def classifier(**settings) -> Classifier:
    torch.manual_seed(0)
    model, pre = create_model("timm:resnet10t", pretrained=False)
    config = TrainConfig(model="timm:resnet10t", channels_last=False, **settings)
    return Classifier(config, training_card(config, pre, ["non-COVID", "COVID"]), model=model)


def batch(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(n, 3, 32, 32, generator=g),
        "label": torch.tensor([0, 1] * (n // 2)),
        "index": torch.arange(n),
    }


def test_mixup_trains_on_mixed_images_against_mixed_soft_labels():
    module = classifier(mixup=0.4)
    module.eval()  # batch norm with running statistics: the same logits for the same images in both computations
    b = batch()
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match="self.log"):  # no trainer attached: Lightning warns that logs go nowhere
        loss = module.training_step(b, 0)
    torch.manual_seed(5)
    images, targets = module.mixup(b["image"], b["label"])
    assert targets.shape == (6, 2) and torch.allclose(targets.sum(1), torch.ones(6))
    assert not torch.equal(images, b["image"])  # the images were mixed, and the loss below is of the mixed ones
    expected = F.cross_entropy(module(images), targets, label_smoothing=module.config.label_smoothing)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert classifier().mixup is None


def test_a_saved_config_with_the_retired_domain_head_reads_when_it_was_off_and_is_refused_when_on(tmp_path):
    off = TrainConfig.from_dict({"epochs": 3, "domain_adversarial": 0.0})  # every older run's config.yaml
    assert off.epochs == 3 and not hasattr(off, "domain_adversarial")
    with pytest.raises(ConfigError, match=r"domain_adversarial was removed .*GENERALIZATION\.md.*delete the field"):
        TrainConfig.from_dict({"domain_adversarial": 1.0})
    with pytest.raises(ConfigError, match="unknown config field"):
        TrainConfig.from_dict({"domain_adversarial_typo": 0.0})


def test_a_saved_config_with_lp_ft_under_its_old_name_reads_as_lp_ft():
    old = TrainConfig.from_dict({"epochs": 3, "linear_probe": True})  # config.yaml of a run from before the rename
    assert old.lp_ft is True and not hasattr(old, "linear_probe")
    assert "linear_probe" not in TrainConfig.from_dict(old.to_dict()).to_dict()  # written back under its new name
    assert TrainConfig.from_dict({"linear_probe": False}).lp_ft is False


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mixup": -1}, "mixup must be"),
    ],
)
def test_bad_lever_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)
