"""The generalisation levers of the training step: mixup and the domain-adversarial head."""

import pytest
import torch
import torch.nn.functional as F

from covidct.config import TrainConfig
from covidct.errors import ConfigError
from covidct.models import create_model
from covidct.training.module import Classifier, training_card

PRE = {"resize": 40, "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}


def classifier(n_domains: int = 0, **settings) -> Classifier:
    torch.manual_seed(0)
    model, pre = create_model("timm:resnet10t", pretrained=False)
    config = TrainConfig(model="timm:resnet10t", channels_last=False, **settings)
    return Classifier(config, training_card(config, pre, ["non-COVID", "COVID"]), model=model, n_domains=n_domains)


def batch(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "label": torch.tensor([0, 1] * (n // 2)),
            "index": torch.arange(n)}  # fmt: skip


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


def test_domain_head_adds_the_weighted_source_loss_and_is_left_out_of_the_network():
    plain = classifier(domain_adversarial=2.0, n_domains=1)
    assert plain.domain_head is None  # one source: nothing to be adversarial about
    module = classifier(domain_adversarial=2.0, n_domains=2)
    module.eval()
    module.train_domains = torch.tensor([0, 0, 1, 1, 0, 1])
    b = batch()
    with pytest.warns(UserWarning, match="self.log"):
        loss = module.training_step(b, 0)
    logits = module(b["image"])
    classification = F.cross_entropy(logits, b["label"], label_smoothing=module.config.label_smoothing)
    assert loss.item() > classification.item()
    # strength only scales the gradient; the loss is the domain head's cross-entropy on the same features
    domain = F.cross_entropy(module.domain_head(module._features, 1.0), module.train_domains)
    assert loss.item() == pytest.approx(classification.item() + 2.0 * domain.item(), rel=1e-5)
    assert any(k.startswith("domain_head.") for k in module.state_dict())
    assert not any("domain" in k for k in module.model.state_dict())  # the exported network has no domain head


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mixup": 0.2, "domain_adversarial": 1.0}, "cannot be combined"),
        ({"mixup": -1}, "mixup must be"),
        ({"domain_adversarial": 11}, "domain_adversarial must be"),
    ],
)
def test_bad_lever_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)
