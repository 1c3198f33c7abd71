"""The ImageNet probe: a logistic regression on the frozen starting network's features, blended with the fine-tuned
network's score. On COVID-CT's 425 training images the fine-tuned network's chosen epoch is as much noise as signal
(seeds differ by 0.07 test AUC); a probe on the features it started from errs differently, and the blend raised the
validation AUC of each of three seeds (mean 0.864 -> 0.879; benchmarks/ACCURACY.md), so the default recipe fits one.

What the probe reads: the channel means of the frozen network's last PROBE_STAGES stages (its mid- and high-level
texture, 704 numbers for efficientnet_lite0), taken by the same hooks as the out-of-distribution detector's features.
The blend is on the log-odds: margin = (1 - s) x (fine-tuned logit margin) + s x (probe logit), s the probe's share
(0.25 in the default recipe), returned as the 2-class logits [0, margin], so softmax(...)[:, 1] = sigmoid(margin) and
everything that scores logits works unchanged.

Stored beside the model as imagenet_probe.safetensors (the frozen weights, the regression, the feature indices) and
imagenet_probe.json (what it is): no pickle; a probe of another architecture or feature width is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from covidct.errors import ModelError
from covidct.fileio.cards import StrictCard, read_json_card
from covidct.ood.features import FeatureTaps, channel_mean, untapped

PROBE_STAGES = 4  # the last four stages' channel means (screened against pooled features alone: ACCURACY.md)
FORMAT = "covidct-imagenet-probe/1"
WEIGHTS_NAME = "imagenet_probe.safetensors"
CARD_NAME = "imagenet_probe.json"


class ProbeCard(StrictCard):
    """imagenet_probe.json, typed (covidct.fileio.cards): what the probe is, validated on read and on write."""

    format: Literal["covidct-imagenet-probe/1"]
    share: float = Field(ge=0, lt=1)  # the probe's share of the blended log-odds
    n_features: int = Field(gt=0)
    architecture: str
    stages: str | None = None
    n_train: int | None = None
    C: float | None = None  # the regression's inverse regularisation, chosen by cross-validation
    cv_auc: float | None = None
    fit_seconds: float | None = None


def stage_mean_indices(net: nn.Module, input_size: int, last: int = PROBE_STAGES) -> torch.Tensor:
    """Where the channel means of the last `last` stages sit in the feature taps' layout (per stage: means, then
    spreads; the pooled features last), found by one small forward pass."""
    net.eval()
    with torch.no_grad(), FeatureTaps(net) as taps:
        net(torch.zeros(1, 3, input_size, input_size))
        widths = [t.shape[1] for t in taps.stats]
        taps.features()
    starts = [sum(widths[:i]) for i in range(len(widths))]
    means = list(zip(starts[0::2], widths[0::2]))[-last:]
    return torch.cat([torch.arange(s, s + w) for s, w in means])


def blend_logits(logits: torch.Tensor, probe_logit: torch.Tensor, share: float) -> torch.Tensor:
    """[0, (1 - s)(l1 - l0) + s z]: softmax of it is sigmoid of the blended log-odds. Pure."""
    margin = (1.0 - share) * (logits[:, 1] - logits[:, 0]).float() + share * probe_logit.float()
    return torch.stack([torch.zeros_like(margin), margin], 1)


class ImageNetProbe(nn.Module):
    """The frozen network, the indices of the features it reads and a 1-output linear layer (the regression)."""

    def __init__(self, net: nn.Module, keep: torch.Tensor, share: float, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("keep", keep.long())
        self.linear = nn.Linear(len(keep), 1)
        self.share = float(share)
        self.info: dict[str, Any] = dict(info or {})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The channel means of the last PROBE_STAGES stages (what `keep` indexes in the feature taps' layout: the
        loader checks it). A network of timm's stem-then-blocks families (EfficientNet, MobileNet) is run up to its
        last stage and no further, and only those means are taken: the same numbers for about a tenth less work
        per scored image (SPEED.md); any other network through the feature taps."""
        net = self.net
        if not all(isinstance(getattr(net, name, None), nn.Module) for name in ("conv_stem", "bn1", "blocks")):
            with FeatureTaps(net) as taps:
                net(x)
                return taps.features()[:, self.keep]
        means = []
        with untapped():  # the stages may carry the detector's hooks, and the fine-tuned network's taps be open
            x = net.bn1(net.conv_stem(x))  # timm's forward_features up to its blocks
            for k, stage in enumerate(net.blocks):
                x = stage(x)
                if k >= len(net.blocks) - PROBE_STAGES:
                    means.append(channel_mean(x))
        return torch.cat(means, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The probe's logit (N,) of a preprocessed batch."""
        return self.linear(self.features(x)).squeeze(1)

    def on_network(self, net: nn.Module) -> ImageNetProbe:
        """The same probe reading `net` (e.g. a batch-norm-folded copy of its own); the regression is shared."""
        other = ImageNetProbe(net, self.keep, self.share, self.info)
        other.linear = self.linear
        return other

    def blend(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return blend_logits(logits, self(x), self.share)

    def card(self) -> dict[str, Any]:
        card = {"format": FORMAT, "share": self.share, "n_features": len(self.keep), **self.info}
        return ProbeCard.read(card, CARD_NAME, "a probe must be fitted by covidct").record()

    def save(self, folder: Path) -> Path:
        from safetensors.torch import save_file

        from covidct.fileio import atomic_write, write_json

        folder.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().float().contiguous().clone() if v.is_floating_point() else v.contiguous().clone()
            for k, v in self.state_dict().items()
        }
        atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(state, str(p), {"format": "pt"}))
        return write_json(folder / CARD_NAME, self.card())


def read_probe_card(folder: Path) -> ProbeCard | None:
    """The probe's card in `folder`, checked on read, or None when the run has no probe."""
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        return None
    return read_json_card(ProbeCard, card_path, "retrain the run or delete the probe's folder")


def load_probe(folder: Path, architecture: str) -> ImageNetProbe | None:
    """The probe saved in `folder`, or None when there is none; refused with a clear error when it does not fit."""
    weights_path = folder / WEIGHTS_NAME
    probe_card = read_probe_card(folder)
    if probe_card is None:
        return None
    card = probe_card.record()
    share, n, arch = card["share"], card["n_features"], card["architecture"]
    if arch != architecture:
        raise ModelError(f"the ImageNet probe in {folder} was fitted for {arch}, not {architecture}")
    from safetensors.torch import load_file

    from covidct.models import create_model

    try:
        state = load_file(str(weights_path))
        net, _ = create_model(arch, pretrained=False)
        info = {k: v for k, v in card.items() if k not in ("format", "share", "n_features")}
        probe = ImageNetProbe(net, torch.zeros(n, dtype=torch.long), share, info)
        probe.load_state_dict(state)
    except Exception as e:
        raise ModelError(f"{weights_path} does not fit the probe its card says ({type(e).__name__}: {e})") from None
    if not torch.equal(probe.keep, stage_mean_indices(probe.net, 64)):  # the features it reads are where it says
        raise ModelError(f"{weights_path}: its feature indices do not match {arch}'s last {PROBE_STAGES} stages")
    return probe
