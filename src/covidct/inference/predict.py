"""`covidct predict`: score PNG/JPEG images, DICOM files, DICOM series folders and NIfTI volumes with an exported
model (safetensors + model.json, or ONNX + model.json) or a run folder, and write one CSV row per image or slice.

Volumes (NIfTI files, DICOM series folders) are scored slice by slice and summarised by VOLUME_AGGREGATION: the
mean of the top-k slice scores, k = max(1, ceil(10% of slices)). A few clearly abnormal slices make a volume
positive, as a radiologist reads one; the per-slice scores are kept in the CSV beside the summary row.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covidct.data import load_rgb
from covidct.data.images import IMAGE_SUFFIXES
from covidct.data.medical import LUNG_WINDOW, is_dicom, is_nifti, read_dicom, read_dicom_series, read_nifti
from covidct.errors import DataError
from covidct.inference.load import LoadedModel

VOLUME_AGGREGATION = "mean of the top-k slice scores, k = max(1, ceil(0.1 x slices))"


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (searched recursively for images, DICOM and NIfTI; a folder of DICOM files only is one
    series) and globs, in a stable order. Raises DataError naming what matched nothing."""
    found: list[Path] = []
    for item in inputs:
        matches = [Path(p) for p in sorted(glob.glob(item, recursive=True))] or [Path(item)]
        for path in matches:
            if not path.exists():
                raise DataError(f"input {item} does not exist")
            found += _expand_folder(path) if path.is_dir() else [path]
    if not found:
        raise DataError(f"no images, DICOM or NIfTI files found in {inputs}")
    return found


def _expand_folder(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if files and all(is_dicom(p) for p in files if p.parent == folder) and any(p.parent == folder for p in files):
        return [folder]  # a DICOM series
    out = []
    for p in files:
        if p.suffix.lower() in IMAGE_SUFFIXES or is_nifti(p) or p.suffix.lower() in (".dcm", ".dicom"):
            out.append(p)
    return out


def read_input(path: Path, window: tuple[float, float] = LUNG_WINDOW) -> tuple[list[Image.Image], bool]:
    """(images, is_volume) of one input: a 2-D image or DICOM slice, or the slices of a volume."""
    if path.is_dir():
        return read_dicom_series(path, window), True
    if is_nifti(path):
        return read_nifti(path, window), True
    if is_dicom(path):
        return [read_dicom(path, window)], False
    return [load_rgb(path)], False


def aggregate_volume(slice_scores: np.ndarray) -> float:
    """VOLUME_AGGREGATION of a volume's slice scores."""
    if len(slice_scores) == 0:
        raise DataError("a volume with no slices cannot be scored")
    k = max(1, math.ceil(0.1 * len(slice_scores)))
    return float(np.sort(slice_scores)[-k:].mean())


def predict_inputs(
    model: LoadedModel,
    paths: list[Path],
    threshold: float | None = None,
    window: tuple[float, float] = LUNG_WINDOW,
    cam_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per image or slice, plus one summary row per volume (slice = 'volume')."""
    t = model.threshold if threshold is None else float(threshold)
    positive, negative = model.card["class_names"][1], model.card["class_names"][0]
    rows: list[dict[str, Any]] = []
    for path in paths:
        images, volume = read_input(path, window)
        scores = model.scores(images)
        for k, s in enumerate(scores):
            rows.append({"path": str(path), "slice": k if volume else "", "score": round(float(s), 6),
                         "label": positive if s >= t else negative, "threshold": t})  # fmt: skip
        if volume:
            v = aggregate_volume(scores)
            rows.append({"path": str(path), "slice": "volume", "score": round(v, 6),
                         "label": positive if v >= t else negative, "threshold": t})  # fmt: skip
        if cam_dir is not None:
            from covidct.inference.explain import save_cams

            save_cams(model, images, path, cam_dir, volume)
    return rows
