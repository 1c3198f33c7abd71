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


def torchvision_eval(pre: Preprocessing):
    """The evaluation pipeline as it was written first, in torchvision's own steps: grey to three equal channels,
    equalised with RandomEqualize(p=1), then all three resized, ToTensor and Normalize."""
    import torchvision.transforms as T

    from covidct.data.crop import CropToBody

    size = (pre.input_size, pre.input_size)
    front = [CropToBody(pre.crop)] if pre.crop != "none" else []
    front += [T.Grayscale(3)] if pre.grayscale else []
    front += [T.RandomEqualize(p=1.0)] if pre.intensity == "equalize" else []
    front += [CLAHE()] if pre.intensity == "clahe" else []
    return T.Compose([*front, T.Resize(size), T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def test_eval_pipeline_gives_torchvisions_numbers_one_image_or_a_batch():
    """Written with PIL and torch alone (no torchvision import on the scoring path): the same numbers as
    torchvision's steps, bit for bit, for grey and colour models, every front step, shrunk and enlarged images."""
    import pytest
    import torch

    rng = np.random.default_rng(3)
    images = [
        Image.fromarray(rng.integers(0, 256, (97, 61, 3), dtype=np.uint8)),  # colour: grey first
        Image.fromarray(rng.integers(0, 256, (300, 410), dtype=np.uint8)).convert("RGB"),  # grey, shrunk
        low_contrast_image().resize((20, 33)),  # enlarged
    ]
    for grey in (True, False):
        for crop in ("none", "body"):
            for intensity in ("none", "equalize", "clahe"):
                pre = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 32, 36, grey, crop, intensity)
                ours = eval_transform(pre)
                batch = ours.batch(images)
                assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32
                for k, img in enumerate(images):
                    theirs = torchvision_eval(pre)(img)
                    assert torch.equal(ours(img), theirs), (grey, crop, intensity, img.size)
                    assert torch.equal(batch[k], theirs), (grey, crop, intensity, img.size)
    with pytest.raises(AssertionError):  # the check can fail: a colour model's pipeline keeps its colours
        pre = Preprocessing(input_size=32, resize=36, grayscale=False)
        assert torch.equal(eval_transform(pre)(images[0])[0], eval_transform(pre)(images[0])[2])


def test_scoring_a_model_does_not_import_torchvision():
    """predict and serve load and score an export without torchvision (and the torch._dynamo it imports): about a
    second of every start (SPEED.md). The eval pipeline and the package's imports keep it so."""
    import subprocess
    import sys

    code = (
        "import sys; from PIL import Image; import covidct.inference.predict, covidct.inference.serve; "
        "from covidct.data.preprocessing import Preprocessing; from covidct.data import eval_transform; "
        "eval_transform(Preprocessing(grayscale=True, intensity='equalize')).batch([Image.new('RGB', (40, 30))]); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torchvision', 'timm', 'lightning'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
