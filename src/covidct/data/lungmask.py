"""Which slices of a CT volume show lung: a lung mask from Hounsfield units (air inside the body), no downloaded
model. For images without HU (PNG/JPEG stacks) the same idea on grey levels: Otsu's threshold instead of HU.

body = the largest component above -500 HU (soft tissue, bone; the table is thinner and cut by an opening),
holes filled; lung = pixels below -400 HU inside the body (air-filled tissue), small specks removed.
A slice counts as lung when the lung area is at least MIN_LUNG_FRACTION of the body's area: neck and abdomen
slices have little or none (bowel gas and the trachea stay under it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BODY_HU = -500.0
LUNG_HU = -400.0
MIN_LUNG_FRACTION = 0.08


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    mask = ndimage.binary_opening(mask, iterations=2)
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def lung_mask(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lung, body) boolean masks of one slice in HU; a 512 x 512 slice is block-averaged to 256 x 256 first (the
    masks give an area ratio, which does not need full resolution), so the masks may be smaller than the slice."""
    from scipy import ndimage

    from covidct.data.crop import shrink

    hu, _ = shrink(np.asarray(hu))
    body = _largest_filled(hu > BODY_HU)
    lung = ndimage.binary_opening(body & (hu < LUNG_HU), iterations=2)
    return lung, body


def lung_fraction(lung: np.ndarray, body: np.ndarray) -> float:
    """Lung area as a share of the body's area (0 when there is no body)."""
    b = int(body.sum())
    return float(lung.sum()) / b if b else 0.0


def has_lung(fraction: float) -> bool:
    return fraction >= MIN_LUNG_FRACTION


def slice_lung_fraction(path: Path) -> float | None:
    """The lung fraction of a DICOM slice file from its HU; None for an image file (no HU, no lung rule)."""
    from covidct.data.images import is_dicom_slice
    from covidct.data.medical import read_dicom_hu

    if not is_dicom_slice(Path(path)):
        return None
    return lung_fraction(*lung_mask(read_dicom_hu(path)))
