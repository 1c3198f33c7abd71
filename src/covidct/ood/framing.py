"""Framing statistics of an image as it is given, before any resize: its shape and its empty margins. What the
network never sees (every input is resized to a square) but what tells a whole scanner slice (square, the body
inside wide margins of air and the black outside the scanner's field of view) from a figure cropped to the body.
The out-of-distribution detector (covidct.ood) checks them beside the network's own features; benchmarks/OOD.md
measures what they add. Chosen to be unchanged by what must not flag (re-encoding, resizing, mirroring, a small
rotation, mild noise): no texture, no noise, no grey-level histogram.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

FRAMING_STATISTICS = ("log_aspect", "dark_rows", "dark_columns")
DARK = 80  # of 255: air (-1000 HU is about 60 in the lung window) and the black outside the field of view
EMPTY = 0.95  # a row or column is empty margin when this share of its pixels is dark
# The smallest spread each statistic is given when the training images barely vary in it (a source whose images are
# all cropped alike): 2% of aspect, 1% of rows or columns. Differences below these are rounding, not framing (the
# training loop reads shrunk copies: a pixel of rounding is 0.4% of aspect at 256 pixels).
RESOLUTION = (0.02, 0.01, 0.01)


def framing_statistics(img: Image.Image) -> np.ndarray:
    """[log(width / height), share of rows that are empty margin, share of columns that are]."""
    grey = np.asarray(img.convert("L"))
    height, width = grey.shape
    dark = grey < DARK
    return np.array(
        [np.log(width / height), float((dark.mean(1) >= EMPTY).mean()), float((dark.mean(0) >= EMPTY).mean())]
    )


def framing_of(images: Iterable[Image.Image]) -> np.ndarray:
    """N x 3 framing statistics of images."""
    rows = [framing_statistics(img) for img in images]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FRAMING_STATISTICS))
