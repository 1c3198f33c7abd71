"""Grad-CAM heat maps (the `grad-cam` package) on the last convolution of any backbone, overlaid on the image.

The model sees the whole image resized to a square, so the map is resized back to the image's own size: each heat
map pixel lies over the image pixel it was computed for. Heat maps show where the model looked, not where disease
is; they are for checking a model, not for diagnosis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from covidct.data.medical import LUNG_WINDOW, apply_window, grey_image
from covidct.errors import ModelError


def last_conv(model: nn.Module) -> nn.Module:
    """The last Conv2d of the network: the deepest spatial features, the usual Grad-CAM layer for CNNs."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(f"{type(model).__name__} has no convolution layer for Grad-CAM")
    return convs[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, target_class: int = 1) -> np.ndarray:
    """Grad-CAM maps (N x H x W, values in [0, 1], at the input's size) for `target_class`."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = model.eval().float()
    with GradCAM(model=model, target_layers=[last_conv(model)]) as cam:
        maps = cam(input_tensor=x.float(), targets=[ClassifierOutputTarget(target_class)] * len(x))
    return np.asarray(maps, dtype=np.float32)


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map in [0, 1] resized to `size` (width, height)."""
    img = Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0, 1)


def overlay(image: Image.Image, cam: np.ndarray, image_weight: float = 0.5) -> Image.Image:
    """The heat map (jet colours) over the image, at the image's size."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    mask = resize_map(cam, image.size)
    return Image.fromarray(show_cam_on_image(rgb, mask, use_rgb=True, image_weight=image_weight))


def explain(model: Any, images: list[Image.Image]) -> list[np.ndarray]:
    """Grad-CAM of each image for the positive class, resized to that image's size. `model` is a LoadedModel."""
    if model.module is None:
        raise ModelError(f"Grad-CAM needs the PyTorch weights; {model.source} is ONNX. Use the safetensors export.")
    maps = grad_cam(model.module, model.tensor(images))
    return [resize_map(m, img.size) for m, img in zip(maps, images)]


def cam_name(path: Path, index: int | None = None) -> str:
    """<input name without suffix>_cam.png, or _slice0007_cam.png for a volume's slices."""
    name = path.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else (Path(name).stem if path.suffix else name)
    return f"{stem}_cam.png" if index is None else f"{stem}_slice{index:04d}_cam.png"


def save_cams(model: Any, images: list[Image.Image], path: Path, cam_dir: Path, volume: bool) -> list[Path]:
    """One overlay PNG per image or slice, named after the input, in cam_dir."""
    from covidct.fileio import atomic_write

    cam_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, (img, cam) in enumerate(zip(images, explain(model, images))):
        out = cam_dir / cam_name(path, k if volume else None)
        picture = overlay(img, cam)
        written.append(atomic_write(out, lambda p, picture=picture: picture.save(p, format="PNG")))
    return written


def dicom_top_slices(tops: list[dict[str, Any]], window: tuple[float, float] = LUNG_WINDOW) -> list[Image.Image]:
    """A DICOM series' top slices (summary["top_slices"], each with its "file") as grey pictures in `window`, read
    again from their files: the series is streamed, not kept."""
    from covidct.data.dicom_study import slice_hu

    return [grey_image(apply_window(slice_hu(Path(top["file"]))[0], *window)) for top in tops]


def save_top_cams(model: Any, path: Path, images: list[Image.Image], cam_dir: Path, label: str = "") -> None:
    """A montage PNG of a volume's top-k slices (`images`, in order) with their heat maps (Grad-CAM), named after
    `path` (and the series' `label`)."""
    if not images:
        return
    tiles = [overlay(img, cam).resize((256, 256)) for img, cam in zip(images, explain(model, images))]
    montage = Image.new("RGB", (256 * len(tiles), 256))
    for i, tile in enumerate(tiles):
        montage.paste(tile, (256 * i, 0))
    from covidct.fileio import atomic_write

    cam_dir.mkdir(parents=True, exist_ok=True)
    stem = cam_name(path).removesuffix("_cam.png") + (f"_{label}" if label else "")
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
    atomic_write(cam_dir / f"{stem}_top{len(tiles)}_cam.png", lambda p: montage.save(p, format="PNG"))
