"""The train and eval pipelines of a model, built from its Preprocessing (stored in every checkpoint).

The eval pipeline (what every score goes through) and the steps it shares with training are written with PIL and
torch alone: importing torchvision costs about a second (it imports torch._dynamo), which predict and serve would pay
at every start for four steps that are each one PIL or torch call (SPEED.md). tests/data/test_transforms.py holds
them to torchvision's own steps, number for number. Training's random steps are torchvision's.

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

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

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


class Grey:
    """To grey (PIL's "L": ITU-R 601-2 luma), as one channel or three equal ones: torchvision's Grayscale."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, img: Image.Image) -> Image.Image:
        grey = img.convert("L")
        return grey if self.channels == 1 else Image.merge("RGB", (grey, grey, grey))

    def __repr__(self) -> str:
        return f"Grey(channels={self.channels})"


class Equalize:
    """Global histogram equalisation (PIL's ImageOps.equalize): torchvision's RandomEqualize(p=1) without its draw
    from torch's random numbers."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.equalize(img)

    def __repr__(self) -> str:
        return "Equalize()"


def _front(pre: Preprocessing, channels: int = 3) -> list:
    """PIL steps before any resize: crop, grey (to `channels`), equalise."""
    steps: list = [CropToBody(pre.crop)] if pre.crop != "none" else []
    if pre.grayscale:
        steps.append(Grey(channels))
    if pre.intensity == "equalize":
        steps.append(Equalize())
    elif pre.intensity == "clahe":
        steps.append(CLAHE())
    return steps


def train_transform(pre: Preprocessing, augment: str = "study") -> Any:
    """Resize the shorter side, random crop covering 50-100% of the area, horizontal flip (as in the study), then
    the chosen augmentation."""
    from torchvision import transforms as T
    from torchvision.transforms import v2

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


def view_transform(pre: Preprocessing) -> Steps:
    """What the model sees of an image before it is resized: the crop, grey and equalisation steps alone."""
    return Steps(_front(pre))


class Steps:
    """PIL steps applied in order (torchvision's Compose, for the steps of this module)."""

    def __init__(self, transforms: list) -> None:
        self.transforms = transforms

    def __call__(self, img: Any) -> Any:
        for step in self.transforms:
            img = step(img)
        return img


def eval_transform(pre: Preprocessing) -> EvalTransform:
    """Resize the whole (cropped) image to a square (as in the study): nothing of the lungs is cropped away."""
    return EvalTransform(pre)


class EvalTransform:
    """The eval pipeline: the front steps, resize to a square (PIL bilinear, as torchvision's Resize does a PIL
    image), to floats in [0, 1] and normalised (torchvision's ToTensor and Normalize). Called on one image it gives
    its 3 x H x W tensor; `batch` gives N x 3 x H x W, converting and normalising the whole batch at once (predict,
    serve: per image that is five small torch calls, each its own parallel region).

    A grey model's image is resized as one channel and repeated to three after: the same numbers as resizing three
    equal channels (PIL resamples each 8-bit band alike; tests/data/test_transforms.py), at a third of the cost
    of the step that dominates decoding (SPEED.md)."""

    def __init__(self, pre: Preprocessing) -> None:
        self.size = (pre.input_size, pre.input_size)
        self.transforms = _front(pre, 1 if pre.grayscale else 3)
        # float32 as torchvision's Normalize makes them; numpy, not torch, for the arithmetic below: torch would start
        # its thread pool in each of predict's worker threads, against the network's
        self.mean = torch.tensor(pre.mean, dtype=torch.float32).numpy().reshape(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32).numpy().reshape(1, 3, 1, 1)

    def resized(self, img: Image.Image) -> np.ndarray:
        """The image after the PIL steps: H x W x C uint8 (C 1 for a grey model, else 3)."""
        for step in self.transforms:
            img = step(img)
        img = img.resize(self.size, Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8).reshape(self.size[1], self.size[0], -1)

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = np.stack([self.resized(img) for img in images]).transpose(0, 3, 1, 2)
        x = pixels.astype(np.float32, order="C") / np.float32(
            255
        )  # ToTensor; a grey batch broadcasts to three channels below
        return torch.from_numpy((x - self.mean) / self.std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.batch([img])[0]

    def __repr__(self) -> str:
        return f"EvalTransform({self.transforms}, size={self.size})"
