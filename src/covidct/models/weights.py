"""Reading ImageNet weight files (state dicts of tensors only, never pickled code) into a backbone."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from covidct.errors import ModelError


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


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
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


def load_by_order(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """EfficientNet-PyTorch style keys differ from timm's but the tensors come in the same order and shapes."""
    own = model.state_dict()
    if len(own) != len(state) or any(a.shape != b.shape for a, b in zip(own.values(), state.values())):
        raise ModelError(
            f"weights {source} do not fit {name}: {len(state)} tensors vs {len(own)} expected, "
            "or shapes differ. Is it a file for another model?"
        )
    model.load_state_dict(dict(zip(own.keys(), state.values())))
