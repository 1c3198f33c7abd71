"""covidct.api's model: `load` an export, a run folder or a model file, and score (`Model.predict`) or explain
(`Model.explain`) with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covidct.data.medical import LUNG_WINDOW
from covidct.errors import ModelError
from covidct.inference.results import Predictions
from covidct.verdict import DEFAULT_AGGREGATION

PathLike = str | Path


class Model:
    """A trained model ready to score: its card (`card`), operating point (`threshold`) and classes."""

    def __init__(self, loaded: Any) -> None:
        self.loaded = loaded  # covidct.inference.loaded.LoadedModel: what the command line scores with

    def __repr__(self) -> str:
        return f"Model({self.loaded.model_id!r}, threshold={self.threshold:.4f})"

    @property
    def card(self) -> dict[str, Any]:
        """The model card as model.json holds it."""
        return self.loaded.card.to_dict()

    @property
    def threshold(self) -> float:
        return self.loaded.threshold

    @property
    def class_names(self) -> list[str]:
        return self.loaded.class_names

    def predict(
        self,
        inputs: PathLike | list[PathLike],
        threshold: float | None = None,
        window: tuple[float, float] = LUNG_WINDOW,
        aggregate: str = DEFAULT_AGGREGATION,
        cam: PathLike | None = None,
    ) -> Predictions:
        """Score files, folders (a folder of DICOM files is read as its studies and series) and globs, as `covidct
        predict` does: unreadable inputs are skipped by name (`Predictions.skipped`), DataError when nothing could
        be scored. threshold: None for the model's operating point; window: the CT window (centre, width) in HU;
        aggregate: how a volume's slice scores make its score; cam: a folder for Grad-CAM overlays (PNG)."""
        from covidct.data.inputs import list_inputs
        from covidct.inference.predict import PredictOptions, predict_inputs

        items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        report: dict[str, Any] = {}
        options = PredictOptions(threshold, window, Path(cam) if cam else None, aggregate)
        rows = predict_inputs(self.loaded, list_inputs(items), options, report)
        return Predictions(rows, report)

    def explain(self, image: PathLike | Image.Image) -> np.ndarray:
        """The Grad-CAM heat map of one image (a file or a PIL image), H x W in [0, 1] at the image's size. It explains
        what `self.loaded.heat_map_explains` says (the fine-tuned network, beside an ImageNet probe's share)."""
        from covidct.data.inputs import read_slice
        from covidct.inference.explain import explain

        if self.loaded.module is None:
            raise ModelError("this model was loaded from ONNX only; Grad-CAM needs its safetensors export")
        picture = image.convert("RGB") if isinstance(image, Image.Image) else read_slice(Path(image))
        return explain(self.loaded, [picture])[0]


def load(path: PathLike, threads: int | None = None) -> Model:
    """The model in an export folder, a run folder or a model file (.safetensors or .onnx with model.json beside it,
    or .ckpt): every file in it checked against the others (ModelError naming the one that does not fit)."""
    from covidct.inference.load import load_trained

    return Model(load_trained(path, threads))
