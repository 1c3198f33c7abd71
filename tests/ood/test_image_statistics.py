"""The image statistics by name (ood/image_statistics.py): the same numbers whether predict takes them from decoded
images or a dataset's items carry them, and only those asked for."""

import numpy as np
import pytest
from PIL import Image

from covidct.data import ImageDataset, Sample, eval_transform
from covidct.data.preprocessing import Preprocessing
from covidct.ood.framing import framing_of
from covidct.ood.image_statistics import IMAGE_STATISTICS, statistics_by_name, statistics_of
from covidct.ood.pixels import pixels_of


def transform(side: int):
    return eval_transform(Preprocessing((0.5,) * 3, (0.5,) * 3, side, side))


def images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        canvas = np.zeros((120 + 20 * i, 160), np.uint8)  # a bright body between black margins, shapes differing
        canvas[20:-20] = rng.integers(60, 255, (canvas.shape[0] - 40, 160), dtype=np.uint8)
        out.append(Image.fromarray(canvas).convert("RGB"))
    return out


def test_by_name_equals_each_halfs_own_function():
    imgs = images()
    both = statistics_of(["framing", "pixels"], imgs)
    np.testing.assert_array_equal(both["framing"], framing_of(imgs))
    np.testing.assert_array_equal(both["pixels"], pixels_of(imgs))
    assert list(statistics_of(["pixels"], imgs)) == ["pixels"] and statistics_of([], imgs) == {}
    assert {k: v.shape for k, v in statistics_of(list(IMAGE_STATISTICS), []).items()} == {
        name: (0, len(columns)) for name, (_, columns) in IMAGE_STATISTICS.items()
    }


@pytest.mark.parametrize("names", [("framing",), ("framing", "pixels"), ()])
def test_a_datasets_items_carry_the_same_numbers_from_their_one_decode(tmp_path, names):
    imgs = images()
    samples = []
    for i, img in enumerate(imgs):
        img.save(tmp_path / f"{i}.png")
        samples.append(Sample(tmp_path / f"{i}.png", i % 2))
    dataset = ImageDataset(samples, transform(32)).with_statistics(statistics_by_name(names))
    expected = statistics_of(names, imgs)
    for i in range(len(imgs)):
        item = dataset.with_transform(transform(64))[i]  # another transform keeps what the items carry
        assert tuple(k for k in item if k in IMAGE_STATISTICS) == names
        for name in names:
            np.testing.assert_allclose(item[name], expected[name][i])
