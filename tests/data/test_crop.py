import numpy as np
import pytest
from PIL import Image

from covidct.data.crop import CropToBody, crop_box
from covidct.data.preprocessing import Preprocessing
from covidct.data.transforms import eval_transform
from tests.conftest import synthetic_ct, whole_slice


def test_lung_crop_of_a_whole_slice_is_the_lungs():
    img, (top, bottom, left, right) = whole_slice()
    t, b, lo, hi = crop_box(img, "lung")
    # the lungs' box plus the margin: air, table and most of the body wall are gone
    assert t <= top and b >= bottom and lo <= left and hi >= right
    assert (b - t) < 1.3 * (bottom - top) and (hi - lo) < 1.3 * (right - left)
    assert b < 0.8 * img.shape[0]  # the table (rows 80-83%) is outside


def test_body_crop_drops_air_and_table():
    img, _ = whole_slice()
    _, b, lo, hi = crop_box(img, "body")
    h, w = img.shape
    assert 0.05 * w < lo < 0.2 * w and 0.8 * w < hi < 0.95 * w
    assert b < 0.8 * h  # the table is cut by the opening and is not part of the body


def test_lung_crop_falls_back_to_the_body_without_enclosed_lungs():
    img, _ = whole_slice(lungs=False)
    assert crop_box(img, "lung") == crop_box(img, "body")


def test_an_image_already_cropped_to_the_lungs_is_left_about_whole():
    """Tight crops (the SARS-CoV-2 set) whose lungs touch the border keep most of their area."""
    img = synthetic_ct(np.random.default_rng(0), covid=False, size=(120, 100))
    tight = img[10:90, 8:112]
    box = crop_box(tight, "lung")
    kept = 1.0 if box is None else (box[1] - box[0]) * (box[3] - box[2]) / tight.size
    assert kept > 0.6


def test_none_and_flat_images_are_not_cropped():
    img, _ = whole_slice()
    assert crop_box(img, "none") is None
    assert crop_box(np.full((64, 64), 7, np.uint8), "lung") is None
    with pytest.raises(ValueError, match="crop must be one of"):
        crop_box(img, "chest")


def test_the_transform_crops_before_resizing_and_remembers_boxes(monkeypatch):
    import covidct.data.crop as crop_module

    img, _ = whole_slice()
    calls = []
    real = crop_module._scaled_region
    monkeypatch.setattr(crop_module, "_scaled_region", lambda grey, mode: calls.append(mode) or real(grey, mode))
    monkeypatch.setattr(CropToBody, "_boxes", {})
    crop = CropToBody("lung")
    out = crop(Image.fromarray(img).convert("RGB"))
    assert out.size[0] < img.shape[1] * 0.8 and out.size[1] < img.shape[0] * 0.8
    assert crop(Image.fromarray(img)).size == out.size and calls == ["lung"]  # the box, found once
    assert CropToBody("lung")(Image.fromarray(img)).size == out.size and calls == ["lung"]  # shared by instances
    body = CropToBody("body")(Image.fromarray(img))  # another mode is another box
    assert calls == ["lung", "body"] and body.size[0] > out.size[0]
    x = eval_transform(Preprocessing((0.5,) * 3, (0.5,) * 3, 32, 36, crop="lung"))(Image.fromarray(img).convert("RGB"))
    assert x.shape == (3, 32, 32)


def test_whole_slice_and_its_lung_crop_look_alike_to_the_model():
    """The point of the crop: a whole slice and a tight crop of the same chest give nearly the same input."""
    img, (top, bottom, left, right) = whole_slice(size=320)
    pre = Preprocessing((0.5,) * 3, (0.5,) * 3, 64, 73, crop="lung")
    whole = eval_transform(pre)(Image.fromarray(img).convert("RGB"))
    tight = eval_transform(pre)(Image.fromarray(img[top - 6 : bottom + 6, left - 6 : right + 6]).convert("RGB"))
    plain = eval_transform(Preprocessing((0.5,) * 3, (0.5,) * 3, 64, 73))
    assert float((whole - tight).abs().mean()) < 0.5 * float(
        (plain(Image.fromarray(img).convert("RGB")) - tight).abs().mean()
    )


def test_large_images_are_cropped_from_a_shrunk_copy_to_the_same_box():
    """Masks of a 512 x 512 slice are computed at 256 x 256 (speed, issue 14); the box matches the full-size one."""
    from covidct.data.crop import _crop_region, crop_box, shrink

    grey, _ = whole_slice(size=512)
    small, f = shrink(grey.astype(np.float32))
    assert f == 2 and small.shape == (256, 256)
    small_image = grey[:300, :300]
    same, f = shrink(small_image)
    assert f == 1 and same is small_image  # smaller images are used as they are, dtype included
    for mode in ("body", "lung"):
        fast, full = crop_box(grey, mode), _crop_region(grey, mode)[0]
        assert fast is not None and full is not None, mode
        assert max(abs(a - b) for a, b in zip(fast, full)) <= 0.02 * 512, (mode, fast, full)


def test_lung_fraction_does_not_depend_on_the_slice_size():
    from covidct.data.lungmask import lung_fraction, lung_mask
    from tests.medical_files import chest_hu

    big, small = lung_fraction(*lung_mask(chest_hu(512))), lung_fraction(*lung_mask(chest_hu(256)))
    assert big == pytest.approx(small, abs=0.02) and big > 0.1


@pytest.mark.parametrize("size", [256, 512])  # 512: the mask is found at 256 and blown back up
def test_lung_mask_keeps_the_lungs_and_a_lesion_at_the_pleura_and_blacks_out_the_rest(size):
    img, _ = whole_slice(size=size)
    yy, xx = np.mgrid[0:size, 0:size]
    # a dense lesion (as bright as tissue) on the outer edge of the left lung: a dent in the dark region
    lesion = ((xx - size * 0.27) / (size * 0.03)) ** 2 + ((yy - size * 0.47) / (size * 0.05)) ** 2 < 1
    img[lesion] = 225
    plain = CropToBody("lung")(Image.fromarray(img))
    masked = CropToBody("lung-mask")(Image.fromarray(img))
    assert masked.size == plain.size  # the same box as --crop lung
    from covidct.data.crop import crop_region

    box, mask = crop_region(img, "lung-mask")  # the transform's cached mask is the same, blown up on use
    assert np.array_equal(np.asarray(masked) == 0, ~mask | (img[box[0] : box[1], box[2] : box[3]] == 0))
    top, _, left, _ = crop_box(img, "lung")
    out = np.asarray(masked)

    def at(y, x):  # a pixel of the whole slice, read in the masked crop
        return int(out[round(y) - top, round(x) - left])

    assert at(size * 0.47, size * 0.36) > 40  # inside the right-hand lung: kept
    assert at(size * 0.47, size * 0.27) > 180  # the lesion at the pleura: kept (the hull fills the dent)
    assert at(size * 0.47, size * 0.50) == 0  # the mediastinum between the lungs: black
    assert at(size * 0.30 - 2, size * 0.50) == 0  # body wall above the gap between the lungs: black
    assert (out == 0).mean() > 0.15 and (out > 40).mean() > 0.5


def test_lung_mask_falls_back_to_the_lung_crop_without_a_pair_of_lungs():
    img, _ = whole_slice(lungs=False)
    assert np.array_equal(
        np.asarray(CropToBody("lung-mask")(Image.fromarray(img))), np.asarray(CropToBody("lung")(Image.fromarray(img)))
    )
    rgb = Image.fromarray(whole_slice()[0]).convert("RGB")
    masked = CropToBody("lung-mask")(rgb)  # a colour image keeps its mode; every band is blacked out
    assert masked.mode == "RGB" and np.asarray(masked)[masked.size[1] // 2, masked.size[0] // 2].tolist() == [0, 0, 0]


def test_lung_mask_is_a_setting_of_training_and_of_the_stored_preprocessing():
    from covidct.config import TrainConfig, check_choices

    check_choices(TrainConfig(crop="lung-mask"))  # accepted as --crop lung-mask and in YAML
    pre = Preprocessing((0.5,) * 3, (0.5,) * 3, 32, 36, crop="lung-mask")
    assert Preprocessing.from_dict(pre.to_dict()).crop == "lung-mask"
    x = eval_transform(pre)(Image.fromarray(whole_slice()[0]).convert("RGB"))
    assert x.shape == (3, 32, 32) and float(x[:, 16, 16].max()) == -1.0  # the mediastinum: black, normalised
