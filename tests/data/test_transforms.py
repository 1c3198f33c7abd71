"""Intensity normalisation in the model's pipelines (stored in the checkpoint's preprocessing)."""

import numpy as np
from PIL import Image
from skimage.exposure import equalize_adapthist

from covidct.data.preprocessing import Preprocessing
from covidct.data.transforms import CLAHE, eval_transform


def low_contrast_image() -> Image.Image:
    rng = np.random.default_rng(0)
    grey = 100 + 20 * np.linspace(0, 1, 64)[None, :] + rng.normal(0, 2, (64, 64))
    grey[16:32, 16:32] += 6  # a faint patch
    return Image.fromarray(grey.clip(0, 255).astype(np.uint8)).convert("RGB")


def test_clahe_is_scikit_images_adaptive_equalisation_per_channel_alike():
    img = low_contrast_image()
    out = np.asarray(CLAHE()(img))
    expected = (equalize_adapthist(np.asarray(img.convert("L")), clip_limit=0.01) * 255).round().astype(np.uint8)
    assert out.shape == (64, 64, 3) and np.array_equal(out[..., 0], expected)
    assert np.array_equal(out[..., 0], out[..., 2])
    grey = np.asarray(img.convert("L"), dtype=float)
    assert out[..., 0].std() > 2 * grey.std()  # the low-contrast image is spread over more grey levels


def test_eval_pipeline_applies_the_stored_intensity_choice():
    pre = dict(resize=40, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, grayscale=True)
    img = low_contrast_image()
    plain = eval_transform(Preprocessing(**pre))(img)
    clahe = eval_transform(Preprocessing(**pre, intensity="clahe"))(img)
    assert any(isinstance(t, CLAHE) for t in eval_transform(Preprocessing(**pre, intensity="clahe")).transforms)
    assert clahe.shape == plain.shape and clahe.std() > 2 * plain.std()
