"""Cropping a CT image to the body or to the lung fields before the model sees it.

Why: the sources differ in framing more than in disease. COVID-CT holds figures cut from papers (borders,
arrows, text), the SARS-CoV-2 set tight crops around the lungs, and a scanner gives whole 512 x 512 slices with
air, table and arms around the body. A model that sees each source framed differently learns the framing; cropping
every image the same way (here, at training, evaluation and prediction alike) removes that difference.

How (scikit-image / SciPy, no downloaded model): Otsu's threshold splits dark (air, lung) from bright (tissue);
the body is the largest bright component after an opening (which cuts the table and thin lines) with its holes
filled; the lungs are the dark regions enclosed by it. `lung` crops to the lungs' bounding box and falls back to the
body where no enclosed lungs are found (an image already cropped to the lungs, where they touch the border);
`body` crops to the body. `lung-mask` crops as `lung` and also blacks out everything outside the lung fields
(each lung's convex hull, widened by the margin: dense lesions at the pleura make dents in the dark region that the
hull fills back in), so that the model sees lung parenchyma only, not the chest wall, mediastinum, arrows or text
that differ between sources; where no pair of lungs is found it falls back to `lung`. An image where nothing
sensible is found is left whole.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import numpy as np
from PIL import Image

from covidct.config import CROPS

MARGIN = 0.04  # of the box's side, added around it
MIN_BODY = 0.15  # a body smaller than this share of the image is not trusted
MIN_LUNG = 0.01  # enclosed dark regions smaller than this share of the body are not lung
MIN_LUNG_WIDTH = 0.6  # lungs narrower than this share of the body's width are taken as one lung: crop to the body
WORK_SIDE = 256  # masks are computed on images block-averaged to a shorter side of 256-511 px (see shrink)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def shrink(image: np.ndarray, side: int = WORK_SIDE) -> tuple[np.ndarray, int]:
    """(image block-averaged by an integer factor f so that its shorter side is at least `side`, f); f = 1 for
    images already that small. The masks here need the body's outline, not 512 x 512 pixels of it: at half the side
    they cost about a tenth (issue 14's 100-slice series spent most of its time in these openings)."""
    f = max(1, min(image.shape) // side)
    if f == 1:  # as given: Otsu's threshold of 8-bit grey differs from that of the same values as floats
        return image, 1
    h, w = image.shape[0] // f * f, image.shape[1] // f * f
    return image[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float32), f


Box = tuple[int, int, int, int]


def crop_box(grey: np.ndarray, mode: str) -> Box | None:
    """(top, bottom, left, right) of the crop of a 2-D grey image, or None to keep it whole."""
    return crop_region(grey, mode)[0]


def crop_region(grey: np.ndarray, mode: str) -> tuple[Box | None, np.ndarray | None]:
    """(box, mask): the crop's box as crop_box gives it and, for `lung-mask` where lungs were found, the boolean
    mask of the lung fields inside that box (the box's own shape), else None."""
    box, small, f = _scaled_region(grey, mode)
    if box is None or small is None:
        return box, None
    return box, _blow_up(small, f, (box[1] - box[0], box[3] - box[2]))


def _scaled_region(grey: np.ndarray, mode: str) -> tuple[Box | None, np.ndarray | None, int]:
    """(box at full size, mask as found on the image shrunk by f, f)."""
    if mode == "none":
        return None, None, 1
    if mode not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {mode!r}")
    small, f = shrink(np.asarray(grey))
    box, mask = _crop_region(small, mode)
    if box is None:
        return None, None, f
    if f > 1:
        h, w = grey.shape
        top, bottom, left, right = box
        box = top * f, min(h, bottom * f), left * f, min(w, right * f)
    return box, mask, f


def _blow_up(mask: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """A mask found at 1/f scale, each pixel blocked f x f back up to `shape`; the rows and columns shrink trimmed
    stay outside."""
    if f == 1:
        return mask
    big = np.repeat(np.repeat(mask, f, axis=0), f, axis=1)
    out = np.zeros(shape, bool)
    out[: big.shape[0], : big.shape[1]] = big[: shape[0], : shape[1]]
    return out


def _crop_region(grey: np.ndarray, mode: str) -> tuple[Box | None, np.ndarray | None]:
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import convex_hull_object

    h, w = grey.shape
    if h < 16 or w < 16 or grey.max() == grey.min():
        return None, None
    bright = grey > threshold_otsu(grey)
    bright = ndimage.binary_opening(bright, iterations=max(1, min(h, w) // 100))
    labels, n = ndimage.label(bright)
    if n == 0:
        return None, None
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, n + 1))
    body = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    if body.sum() < MIN_BODY * h * w:
        return None, None
    box, fields = _box(body), None
    if mode in ("lung", "lung-mask"):
        lungs = body & ~bright
        lungs = ndimage.binary_opening(lungs, iterations=max(1, min(h, w) // 100))
        lab, m = ndimage.label(lungs)
        if m:
            sizes = ndimage.sum_labels(lungs, lab, index=np.arange(1, m + 1))
            keep = np.isin(lab, 1 + np.flatnonzero(sizes >= MIN_LUNG * body.sum()))
            if keep.any():
                lung_box = _box(keep)
                # one lung enclosed and the other cut by the image border: keep the body rather than half the chest
                if lung_box[3] - lung_box[2] >= MIN_LUNG_WIDTH * (box[3] - box[2]):
                    box, fields = lung_box, keep
    top, bottom, left, right = box
    dy, dx = round((bottom - top) * MARGIN), round((right - left) * MARGIN)
    box = max(0, top - dy), min(h, bottom + dy), max(0, left - dx), min(w, right + dx)
    if mode != "lung-mask" or fields is None:
        return box, None
    hull = ndimage.binary_dilation(convex_hull_object(fields), iterations=max(1, min(dy, dx)))
    return box, hull[box[0] : box[1], box[2] : box[3]]


class CropToBody:
    """A transform (PIL in, PIL out) cropping to the body or the lungs (and blacking out what lies outside the lungs
    for `lung-mask`); see the module's docstring."""

    # Boxes (and masks, bit-packed at the scale they were found: a quarter of a 512 x 512 slice's) by mode and
    # content, shared by every instance in a process: training sees each image often, and evaluation scores the same
    # images with one transform and reads their statistics with another.
    _boxes: ClassVar[dict[tuple[str, bytes], tuple[Box | None, tuple[np.ndarray, int, int] | None]]] = {}

    def __init__(self, mode: str = "lung") -> None:
        if mode not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {mode!r}")
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        grey = np.asarray(img.convert("L"))
        digest = hashlib.blake2b(grey.tobytes(), digest_size=16, person=str(grey.shape).encode()[:16]).digest()
        key = (self.mode, digest)
        boxes = CropToBody._boxes
        if key not in boxes:
            if len(boxes) > 50_000:
                boxes.clear()
            box, small, f = _scaled_region(grey, self.mode)
            boxes[key] = box, None if small is None else (np.packbits(small, axis=1), small.shape[1], f)
        box, packed = boxes[key]
        if box is None:
            return img
        top, bottom, left, right = box
        out = img.crop((left, top, right, bottom))
        if packed is None:
            return out
        bits, width, f = packed
        mask = _blow_up(np.unpackbits(bits, axis=1, count=width).astype(bool), f, (bottom - top, right - left))
        black = Image.new(out.mode, out.size)  # zeros in every band: black, transparent
        return Image.composite(out, black, Image.fromarray(mask))

    def __repr__(self) -> str:
        return f"CropToBody(mode={self.mode!r})"
