"""Framing statistics of images with known shapes and margins, and what must not change them."""

import io

import numpy as np
import pytest
from PIL import Image

from covidct.ood.framing import RESOLUTION, framing_of, framing_statistics


def body(width: int = 300, height: int = 200, seed: int = 0) -> Image.Image:
    """A bright, textured 'body' filling the frame: no empty margin."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(120, 255, (height, width), dtype=np.uint8)).convert("RGB")


def jpeg(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=75)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_known_shape_and_margins():
    canvas = np.zeros((200, 200), np.uint8)  # a square frame: 40 black rows above and below a 200 x 120 body
    canvas[40:160] = np.asarray(body(200, 120).convert("L"))
    stats = framing_statistics(Image.fromarray(canvas))
    np.testing.assert_allclose(stats, [0.0, 80 / 200, 0.0])
    np.testing.assert_allclose(framing_statistics(body(300, 200)), [np.log(1.5), 0.0, 0.0])


@pytest.mark.parametrize(
    "change",
    [
        lambda im: im.resize((240, 192)),
        lambda im: im.resize((375, 300)),
        lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        jpeg,
    ],
)
def test_benign_changes_stay_within_the_resolution(change):
    """Re-sized, mirrored, re-encoded. (A rotation tilts the body's edge into the margin rows: measured on real images,
    where the margins' spread across a source absorbs it, in benchmarks/OOD.md.)"""
    canvas = np.zeros((240, 300), np.uint8)
    canvas[20:220] = np.asarray(body(300, 200).convert("L"))
    img = Image.fromarray(canvas).convert("RGB")
    assert np.all(np.abs(framing_statistics(change(img)) - framing_statistics(img)) <= np.array(RESOLUTION) * 1.5)


def test_framing_of_many_and_of_none():
    assert framing_of([body(), body(200, 200)]).shape == (2, 3)
    assert framing_of([]).shape == (0, 3)
