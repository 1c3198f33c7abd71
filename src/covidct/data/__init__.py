"""Data: sample lists per split, images as RGB, the study's transforms, download and inspection."""

from covidct.data.datasets import (
    CLASS_NAMES,
    OFFICIAL_COUNTS,
    SPLITS,
    ImageDataset,
    Sample,
    SeededDraws,
    SplitData,
    load_splits,
)
from covidct.data.images import load_rgb, to_rgb
from covidct.data.transforms import eval_transform, train_transform

__all__ = [
    "CLASS_NAMES",
    "OFFICIAL_COUNTS",
    "SPLITS",
    "ImageDataset",
    "Sample",
    "SeededDraws",
    "SplitData",
    "eval_transform",
    "load_rgb",
    "load_splits",
    "to_rgb",
    "train_transform",
]
