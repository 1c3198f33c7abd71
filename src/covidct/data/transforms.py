"""The study's train and eval pipelines, normalised with the backbone's own mean and std.

Options beyond the study: `grayscale` makes every image single-tone (replicated to 3 channels) before the model
sees it, removing colour mode as a shortcut (CT is grey; the COVID-CT classes differ in colour mode); `augment="ct"`
adds a small affine jitter and brightness/contrast changes that CT from other scanners and windows can show.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

AUGMENTATIONS = ("study", "ct")


def train_transform(
    mean: Sequence[float],
    std: Sequence[float],
    input_size: int = 224,
    resize: int = 256,
    grayscale: bool = False,
    augment: str = "study",
) -> T.Compose:
    """Resize the shorter side, random crop covering 50-100% of the area, horizontal flip (as in the study)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    steps: list = [T.Grayscale(3)] if grayscale else []
    steps += [T.Resize(resize), T.RandomResizedCrop(input_size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()]
    if augment == "ct":
        steps += [
            T.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.95, 1.05)),
            T.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(
    mean: Sequence[float], std: Sequence[float], input_size: int = 224, grayscale: bool = False
) -> T.Compose:
    """Resize the whole image to a square (as in the study): nothing of the lungs is cropped away."""
    steps: list = [T.Grayscale(3)] if grayscale else []
    return T.Compose([*steps, T.Resize((input_size, input_size)), T.ToTensor(), T.Normalize(mean, std)])
