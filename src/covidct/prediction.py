"""`covidct predict`: score PNG/JPEG images, DICOM files, DICOM series folders and NIfTI volumes with an exported
model (safetensors + model.json, or ONNX + model.json) or a run folder, and write one CSV row per image or slice.

Volumes (NIfTI files, DICOM series folders) are scored slice by slice and summarised by VOLUME_AGGREGATION: the
mean of the top-k slice scores, k = max(1, ceil(10% of slices)). A few clearly abnormal slices make a volume
positive, as a radiologist reads one; the per-slice scores are kept in the CSV beside the summary row.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from covidct.data import eval_transform, load_rgb
from covidct.data.images import IMAGE_SUFFIXES
from covidct.data.medical import LUNG_WINDOW, is_dicom, is_nifti, read_dicom, read_dicom_series, read_nifti
from covidct.errors import DataError, ModelError
from covidct.models import Preprocessing

VOLUME_AGGREGATION = "mean of the top-k slice scores, k = max(1, ceil(0.1 x slices))"


@dataclass
class LoadedModel:
    """A model ready to score: PyTorch module or ONNX Runtime session, with its card."""

    card: dict[str, Any]
    module: torch.nn.Module | None = None
    session: Any = None
    source: str = ""
    _transform: Any = field(default=None, repr=False)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.card["preprocessing"])

    @property
    def threshold(self) -> float:
        return float(self.card.get("threshold", 0.5))

    @property
    def model_id(self) -> str:
        return f"{self.card['architecture']}:{self.card.get('source_run', Path(self.source).name)}"

    def tensor(self, images: list[Image.Image]) -> torch.Tensor:
        if self._transform is None:
            pre = self.preprocessing
            self._transform = eval_transform(pre.mean, pre.std, pre.input_size, pre.grayscale)
        return torch.stack([self._transform(img) for img in images])

    @torch.no_grad()
    def scores(self, images: list[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Probability of the positive class for each image."""
        out = []
        for start in range(0, len(images), batch_size):
            x = self.tensor(images[start : start + batch_size])
            if self.session is not None:
                logits = self.session.run(None, {self.session.get_inputs()[0].name: x.numpy()})[0]
                logits = torch.from_numpy(logits)
            else:
                logits = self.module(x)  # type: ignore[misc]
            out.append(logits.float().softmax(1)[:, 1].numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def load_model(path: str | Path, threads: int | None = None) -> LoadedModel:
    """An export folder (model.json with model.safetensors and/or model.onnx: ONNX Runtime scores when present,
    PyTorch explains), a
    .safetensors or .onnx file with model.json beside it, or a run folder (its export/, else its best checkpoint
    read with weights_only=True: no pickled code runs). threads: ONNX Runtime's intra-op threads (default: torch's)."""
    from covidct.export import CARD_NAME, load_safetensors_model

    path = Path(path)
    if not path.exists():
        raise ModelError(f"model {path} does not exist (give an export folder, a run folder or a model file)")
    if path.is_dir():
        if (path / "checkpoints").is_dir():
            export = path / "export"
            return load_model(export, threads) if (export / "model.safetensors").is_file() else _load_run(path)
        if (path / "model.safetensors").is_file():
            model = load_model(path / "model.safetensors")
            if (path / "model.onnx").is_file():  # scores from ONNX Runtime (faster), Grad-CAM from PyTorch
                model.session = load_model(path / "model.onnx", threads).session
            return model
        if (path / "model.onnx").is_file():
            return load_model(path / "model.onnx", threads)
        raise ModelError(f"folder {path} holds no model.safetensors or model.onnx (export one: covidct export RUN)")
    if path.suffix == ".safetensors":
        module, card = load_safetensors_model(path)
        return LoadedModel(card, module=module, source=str(path))
    if path.suffix == ".onnx":
        import json

        import onnxruntime as ort

        card_path = path.with_name(CARD_NAME)
        if not card_path.is_file():
            raise ModelError(f"{path} has no {CARD_NAME} beside it (it holds the preprocessing and threshold)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or max(1, torch.get_num_threads())
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return LoadedModel(json.loads(card_path.read_text()), session=session, source=str(path))
    raise ModelError(f"model file {path} must be .safetensors or .onnx (with {CARD_NAME} beside it)")


def _load_run(run_dir: Path) -> LoadedModel:
    from covidct.evaluation import find_checkpoint
    from covidct.models import create_model

    ckpt = find_checkpoint(run_dir)
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = f"checkpoint {ckpt} cannot be read safely ({type(e).__name__}: {e}); export it first: covidct export"
        raise ModelError(msg) from None
    hp = saved["hyper_parameters"]
    model, _ = create_model(hp["model_name"], pretrained=False)
    state = {k.removeprefix("model."): v for k, v in saved["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    card = {
        "architecture": hp["model_name"],
        "preprocessing": dict(hp["preprocessing"]),
        "class_names": list(hp["class_names"]),
        "threshold": float(hp.get("threshold", 0.5)),
        "source_run": run_dir.name,
    }
    return LoadedModel(card, module=model.eval().float(), source=str(run_dir))


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
            from covidct.explanation import save_cams

            save_cams(model, images, path, cam_dir, volume)
    return rows
