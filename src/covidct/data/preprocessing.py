"""What an image needs before a backbone sees it; stored in every checkpoint and model card."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from covidct.config.base import CROPS, INPUT_SIZES, INTENSITIES, plain_number

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
        """From a checkpoint's or a model card's record, every field checked: a model file is input too (a size past
        the bounds would take the machine's memory, a std of 0 or a missing mean gives NaN scores or a traceback, a
        word is not a yes). ValueError names the field and what it must be."""
        if not isinstance(d, dict):
            raise ValueError(f"must be a mapping of mean, std, input_size, resize, ..., got {type(d).__name__}")
        input_size = _whole(d, "input_size", *INPUT_SIZES)
        return cls(
            _three(d, "mean", lambda v: True),
            _three(d, "std", lambda v: v > 0),
            input_size,
            _whole(d, "resize", input_size, 2 * input_size),  # the shorter side before the centre crop
            _one_of(d, "grayscale", (False, True), False),
            _one_of(d, "crop", CROPS, "none"),  # checkpoints from before these options: neither
            _one_of(d, "intensity", INTENSITIES, "none"),
        )


def _three(d: dict[str, Any], name: str, fits: Any) -> tuple[float, float, float]:
    value = d.get(name)
    numbers = isinstance(value, (list, tuple)) and all(plain_number(v) for v in value)
    if not (numbers and len(value) == 3 and all(math.isfinite(v) and fits(v) for v in value)):
        must = "positive" if name == "std" else "finite"
        raise ValueError(f"'{name}' must be three {must} numbers (one per channel), got {value!r}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _whole(d: dict[str, Any], name: str, least: int, most: int) -> int:
    value = d.get(name)
    if not (plain_number(value) and float(value).is_integer() and least <= value <= most):
        raise ValueError(f"'{name}' must be a whole number of pixels from {least} to {most}, got {value!r}")
    return int(value)


def _one_of(d: dict[str, Any], name: str, allowed: Sequence[Any], missing: Any) -> Any:
    value = d.get(name, missing)
    if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
        raise ValueError(f"'{name}' must be one of {list(allowed)}, got {value!r}")
    return value
