"""The statistics of an image as it is given that the out-of-distribution detector checks beside the network's
features, by name (its "halves": ood/framing.py, ood/pixels.py). Written once here for every place that takes them:
a dataset's items (ImageDataset.with_statistics), predict's decoded images (statistics_of) and the fit; which of them
a detector needs is its own `image_halves`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from covidct.ood.framing import FRAMING_STATISTICS, framing_statistics
from covidct.ood.pixels import PIXEL_STATISTICS, pixel_statistics

IMAGE_STATISTICS: dict[str, tuple[Callable[[Image.Image], np.ndarray], tuple[str, ...]]] = {
    "framing": (framing_statistics, FRAMING_STATISTICS),
    "pixels": (pixel_statistics, PIXEL_STATISTICS),
}


def statistics_of(names: Sequence[str], images: Iterable[Image.Image]) -> dict[str, np.ndarray]:
    """{name: N x width} of each named statistic of `images` (each image read once per name)."""
    images = list(images)
    out = {}
    for name in names:
        of, columns = IMAGE_STATISTICS[name]
        out[name] = np.array([of(img) for img in images], dtype=np.float64).reshape(len(images), len(columns))
    return out


def statistics_by_name(names: Sequence[str]) -> dict[str, Callable[[Image.Image], np.ndarray]]:
    """{name: the function of an image} of each named statistic: what ImageDataset.with_statistics takes."""
    return {name: IMAGE_STATISTICS[name][0] for name in names}
