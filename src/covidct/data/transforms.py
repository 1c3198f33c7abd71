"""The train and eval pipelines of a model, built from its Preprocessing (stored in every checkpoint).

Steps, in order: optional crop to the body or lungs (crop.py: every source framed alike), optional grey (CT is
grey; the COVID-CT classes differ in colour mode), optional intensity normalisation (global or adaptive histogram
equalisation: sources differ in window and contrast), then the study's resize/crop/flip and the chosen
augmentation.

Augmentations (torchvision.transforms.v2):
- study: resize the shorter side, random crop of 50-100% of the area, horizontal flip (the seed study);
- ct: also a small affine jitter (±10°, 5% shift, ±5% scale) and ±20% brightness/contrast;
- robust: ct plus what another scanner, window or file format does to an image: blur, noise, gamma/contrast
  changes and JPEG re-encoding.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

from covidct.data.crop import CropToBody
from covidct.data.preprocessing import Preprocessing

AUGMENTATIONS = ("study", "ct", "robust")


class CLAHE:
    """Contrast-limited adaptive histogram equalisation (scikit-image's equalize_adapthist) of a grey or RGB PIL
    image: local contrast evened out tile by tile, with the clip limit keeping noise from being amplified. Unlike
    global equalisation it keeps a region's brightness relative to its surroundings."""

    def __init__(self, clip_limit: float = 0.01) -> None:
        self.clip_limit = clip_limit

    def __call__(self, img: Image.Image) -> Image.Image:
        from skimage.exposure import equalize_adapthist

        grey = np.asarray(img.convert("L"))
        out = (equalize_adapthist(grey, clip_limit=self.clip_limit) * 255).round().astype(np.uint8)
        return Image.fromarray(out).convert(img.mode)

    def __repr__(self) -> str:
        return f"CLAHE(clip_limit={self.clip_limit})"


def _front(pre: Preprocessing) -> list:
    """PIL steps before any resize: crop, grey, equalise."""
    steps: list = [CropToBody(pre.crop)] if pre.crop != "none" else []
    if pre.grayscale:
        steps.append(T.Grayscale(3))
    if pre.intensity == "equalize":
        steps.append(T.RandomEqualize(p=1.0))
    elif pre.intensity == "clahe":
        steps.append(CLAHE())
    return steps


def train_transform(pre: Preprocessing, augment: str = "study") -> T.Compose:
    """Resize the shorter side, random crop covering 50-100% of the area, horizontal flip (as in the study), then
    the chosen augmentation."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    steps = _front(pre)
    steps += [T.Resize(pre.resize), T.RandomResizedCrop(pre.input_size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()]
    if augment in ("ct", "robust"):
        steps += [
            T.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.95, 1.05)),
            T.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    if augment == "robust":  # on PIL images, then uint8 tensors (JPEG), then floats (noise)
        steps += [
            T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
            T.RandomApply([T.ColorJitter(contrast=(0.6, 1.4))], p=0.3),
            v2.PILToTensor(),
            v2.RandomApply([v2.JPEG((30, 95))], p=0.3),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.GaussianNoise(sigma=0.03)], p=0.3),
            T.Normalize(pre.mean, pre.std),
        ]
        return T.Compose(steps)
    return T.Compose([*steps, T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def view_transform(pre: Preprocessing) -> T.Compose:
    """What the model sees of an image before it is resized: the crop, grey and equalisation steps alone."""
    return T.Compose(_front(pre))


def eval_transform(pre: Preprocessing) -> T.Compose:
    """Resize the whole (cropped) image to a square (as in the study): nothing of the lungs is cropped away.

    A grey model's image is resized as one channel and repeated to three after: the same numbers as resizing three
    equal channels (PIL resamples each 8-bit band alike; tests/data/test_transforms.py), at a third of the cost
    of the step that dominates decoding (SPEED.md)."""
    size = (pre.input_size, pre.input_size)
    if pre.grayscale:
        front = [T.Grayscale(1) if isinstance(step, T.Grayscale) else step for step in _front(pre)]
        return T.Compose([*front, T.Resize(size), T.ToTensor(), ThreeChannels(), T.Normalize(pre.mean, pre.std)])
    return T.Compose([*_front(pre), T.Resize(size), T.ToTensor(), T.Normalize(pre.mean, pre.std)])


class ThreeChannels:
    """A 1 x H x W tensor as 3 x H x W (a view: Normalize writes a new tensor)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(3, *x.shape[1:])

    def __repr__(self) -> str:
        return "ThreeChannels()"
