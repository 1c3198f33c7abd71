"""The ImageNet probe's pieces (covidct.inference.imagenet_probe, covidct.training.imagenet_probe): the blend is the
weighted log-odds, the features are the last stages' channel means, the regression's standardisation folds back
exactly, and a saved probe comes back the same or is refused with a clear error."""

import json

import numpy as np
import pytest
import torch

from covidct.errors import ModelError
from covidct.inference.imagenet_probe import (
    CARD_NAME,
    WEIGHTS_NAME,
    ImageNetProbe,
    blend_logits,
    load_probe,
    stage_mean_indices,
)
from covidct.models import backbone_stages as stages
from covidct.models import create_model
from covidct.training.imagenet_probe import PROBE_CS, fit_regression


def test_blend_is_the_weighted_log_odds():
    g = torch.Generator().manual_seed(0)
    logits, z = torch.randn(7, 2, generator=g) * 3, torch.randn(7, generator=g) * 2
    got = blend_logits(logits, z, 0.25).softmax(1)[:, 1].numpy()
    lg, zz = logits.numpy().astype(np.float64), z.numpy().astype(np.float64)
    want = 1 / (1 + np.exp(-(0.75 * (lg[:, 1] - lg[:, 0]) + 0.25 * zz)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(blend_logits(logits, z, 0.0).softmax(1)[:, 1], logits.softmax(1)[:, 1], rtol=1e-5)


def small_probe(seed: int = 0) -> ImageNetProbe:
    torch.manual_seed(seed)
    net = create_model("efficientnet_lite0", pretrained=False)[0].eval()
    probe = ImageNetProbe(net, stage_mean_indices(net, 64), 0.25, {"architecture": "efficientnet_lite0"})
    torch.nn.init.normal_(probe.linear.weight, std=0.1)
    return probe


def test_features_are_the_channel_means_of_the_last_four_stages():
    probe = small_probe()
    x = torch.randn(3, 3, 64, 64)
    seen = []
    hooks = [s.register_forward_hook(lambda _m, _i, out: seen.append(out.mean((2, 3)))) for s in stages(probe.net)[-4:]]
    with torch.no_grad():
        probe.net(x)
    for h in hooks:
        h.remove()
    want = torch.cat(seen, 1)
    assert len(probe.keep) == want.shape[1] == 80 + 112 + 192 + 320  # efficientnet_lite0's last four stages
    with torch.no_grad():
        torch.testing.assert_close(probe.features(x), want, rtol=1e-4, atol=1e-5)


def test_regression_folds_its_standardisation_back_exactly():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    x = rng.normal(size=(60, 8)) * np.array([1, 10, 0.1, 5, 1, 1, 100, 1]) + 3
    x[:, 0] += 1.5 * y
    weights, bias, chosen = fit_regression(x, y)
    assert chosen["C"] in PROBE_CS and 0.5 < chosen["cv_auc"] <= 1
    mean, std = x.mean(0), x.std(0)
    ref = LogisticRegression(  # the same fit on the standardised features (CV's refit stops a little apart)
        C=chosen["C"], max_iter=10000
    ).fit((x - mean) / std, y)
    np.testing.assert_allclose(x @ weights + bias, ref.decision_function((x - mean) / std), atol=0.01)
    assert fit_regression(x[:3], np.array([0, 0, 1])) is None  # one image of a class: nothing to cross-validate


def test_saved_probe_comes_back_the_same(tmp_path):
    probe = small_probe()
    probe.save(tmp_path)
    back = load_probe(tmp_path, "efficientnet_lite0")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x), probe(x))
    assert back.share == 0.25 and back.card()["architecture"] == "efficientnet_lite0"
    assert load_probe(tmp_path / "nothing", "efficientnet_lite0") is None


def test_a_probe_that_does_not_fit_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    small_probe().save(tmp_path)
    with pytest.raises(ModelError, match="fitted for efficientnet_lite0, not efficientnet_lite1"):
        load_probe(tmp_path, "efficientnet_lite1")
    card = json.loads((tmp_path / CARD_NAME).read_text())
    (tmp_path / CARD_NAME).write_text(json.dumps({**card, "share": 1.5}))
    with pytest.raises(ModelError, match="field 'share' input should be less than 1"):
        load_probe(tmp_path, "efficientnet_lite0")
    for bad, named in (({**card, "sahre": 0.2}, "'sahre' is not a field"), ({**card, "format": "x"}, "'format'")):
        (tmp_path / CARD_NAME).write_text(json.dumps(bad))
        with pytest.raises(ModelError, match=named):
            load_probe(tmp_path, "efficientnet_lite0")
    (tmp_path / CARD_NAME).write_text(json.dumps(card))
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    save_file({**state, "keep": state["keep"] + 1}, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ModelError, match="feature indices do not match"):
        load_probe(tmp_path, "efficientnet_lite0")
    save_file({k: v for k, v in state.items() if k != "linear.bias"}, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ModelError, match="does not fit the probe"):
        load_probe(tmp_path, "efficientnet_lite0")
