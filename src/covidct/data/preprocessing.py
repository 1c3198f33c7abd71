"""What an image needs before a backbone sees it; stored in every checkpoint and model card."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The study resized the shorter side to 256 and cropped 224: the same ratio is kept for every input size.
RESIZE_RATIO = 256 / 224


def resize_for(input_size: int) -> int:
    """The shorter side before the training crop, in the study's 256:224 ratio."""
    return round(input_size * RESIZE_RATIO)


@dataclass(frozen=True)
class Preprocessing:
    """Mean/std/input size of the backbone, plus covidct's own image steps (grey, crop to the body)."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    resize: int = 256  # shorter side before the random crop, as in the study
    grayscale: bool = False  # every image to grey (3 equal channels) before normalisation
    crop: str = "none"  # "body" or "lung": crop to the body or the lung fields first (data/crop.py)
    intensity: str = "none"  # "equalize": histogram equalisation after the crop (transforms.py)

    @classmethod
    def for_input(
        cls, input_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> Preprocessing:
        return cls(tuple(mean), tuple(std), int(input_size), resize_for(int(input_size)))

    def with_input_size(self, input_size: int) -> Preprocessing:
        return replace(self, input_size=int(input_size), resize=resize_for(int(input_size)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            tuple(d["mean"]),
            tuple(d["std"]),
            int(d["input_size"]),
            int(d["resize"]),
            bool(d.get("grayscale", False)),
            str(d.get("crop", "none")),  # checkpoints from before these options: neither
            str(d.get("intensity", "none")),
        )
