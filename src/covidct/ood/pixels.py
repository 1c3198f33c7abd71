"""Pixel statistics of an image's central region, as it is given: its grey-level histogram, brightness, spread,
clipped shares, noise and texture. What differs between sources' reconstructions, windows and encodings (the audit's
probe tells the sources apart by such statistics at AUC 1.000), and what the network's own features keep too little
of. The out-of-distribution detector (covidct.ood) checks them as a third half beside the network's features and the
framing (ood/framing.py).

Why the central region: the margins are the framing half's (an image's empty rows and columns), and a small rotation
of a tight crop brings black corners into them; without an eighth of each side, a 5-degree rotation no longer flags
(benchmarks/OOD.md: 14.5% to 7.5% of a SARS-CoV-2 model's validation images).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

BINS = 16  # of the grey-level histogram
MARGIN = 1 / 8  # of each side, left out
SIDE = 160  # the central region is resized to SIDE x SIDE for noise and texture, so they do not follow image size
PIXEL_STATISTICS = (*(f"grey_{i}" for i in range(BINS)), "mean", "spread", "black", "white", "noise", "texture")


def pixel_statistics(img: Image.Image) -> np.ndarray:
    """The statistics of PIXEL_STATISTICS: the histogram's shares, mean and standard deviation of the grey level,
    the shares below 8 and above 247, log(1 + mean residual after a 3 x 3 mean) and log(1 + mean gradient)."""
    from scipy.ndimage import uniform_filter

    grey = np.asarray(img.convert("L"))
    height, width = grey.shape
    dh, dw = int(height * MARGIN), int(width * MARGIN)
    centre = grey[dh : height - dh, dw : width - dw] if height > 2 * dh and width > 2 * dw else grey
    share = np.bincount(centre.ravel(), minlength=256) / centre.size  # every grey level's share: one pass
    levels = np.arange(256.0)
    mean = float(share @ levels)
    spread = float(np.sqrt(max(share @ (levels - mean) ** 2, 0.0)))
    small = np.asarray(Image.fromarray(centre).resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32)
    noise = np.abs(small - uniform_filter(small, 3, mode="nearest")).mean()
    texture = np.abs(np.diff(small, axis=1)).mean() + np.abs(np.diff(small, axis=0)).mean()
    return np.r_[
        share.reshape(BINS, -1).sum(1),
        mean,
        spread,
        share[:8].sum(),
        share[248:].sum(),
        np.log1p(noise),
        np.log1p(texture),
    ]


def pixels_of(images: Iterable[Image.Image]) -> np.ndarray:
    """N x len(PIXEL_STATISTICS) pixel statistics of images."""
    rows = [pixel_statistics(img) for img in images]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(PIXEL_STATISTICS))
