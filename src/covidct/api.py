"""covidct as a library: the small, typed Python API that notebooks and pipelines use, over the same code the command
line runs (the command line parses flags and calls the functions these call). Errors are covidct's typed exceptions
(`CovidCTError` and its kinds), carrying the message the command line prints.

Load a model (an export folder, a run folder or a model file) and score images, DICOM folders and NIfTI volumes::

    import covidct.api as cct

    model = cct.load("runs/demo/export")
    result = model.predict(["scans/patient7/", "slice.png"])
    result.to_frame()          # a pandas DataFrame: a row per image or slice, a summary row per volume and study
    result.shift               # the batch shift test of everything scored
    heat = model.explain("slice.png")   # the Grad-CAM heat map, an H x W array in [0, 1]

A run folder also evaluates and takes an operating point::

    metrics = cct.evaluate("runs/demo", on="site=/data/site")   # metrics with intervals, per group
    cct.choose_threshold("runs/demo", "youden", on="site=/data/site")

Training takes a configuration (a TrainConfig, a dict of its fields or a YAML file) and returns the run folder::

    run = cct.train({"data_dir": "data/covid-ct", "epochs": 12, "seed": 1})
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covidct.config import TrainConfig
from covidct.data.medical import LUNG_WINDOW
from covidct.errors import ConfigError, CovidCTError, DataError, ModelError
from covidct.verdict import DEFAULT_AGGREGATION

__all__ = [
    "ConfigError",
    "CovidCTError",
    "DataError",
    "Model",
    "ModelError",
    "Predictions",
    "choose_threshold",
    "evaluate",
    "load",
    "train",
]

PathLike = str | Path


@dataclass
class Predictions:
    """What `Model.predict` gives: `rows` (a dict per image or slice, and a summary row per volume, series and study:
    the CSV `covidct predict` writes) and `report` (the patient-level results: the JSON it writes)."""

    rows: list[dict[str, Any]]
    report: dict[str, Any]

    @property
    def shift(self) -> dict[str, Any]:
        """The batch shift test of everything scored ("tested": False and why when it could not run)."""
        return self.report["shift"]

    @property
    def skipped(self) -> list[str]:
        """The inputs that could not be read, each with why."""
        return list(self.report.get("skipped", []))

    def to_frame(self) -> Any:
        """The rows as a pandas DataFrame (pandas is needed for this one call only)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Predictions.to_frame needs pandas: pip install pandas") from None
        return pd.DataFrame(self.rows)


class Model:
    """A trained model ready to score: its card (`card`), operating point (`threshold`) and classes."""

    def __init__(self, loaded: Any) -> None:
        self.loaded = loaded  # covidct.inference.load.LoadedModel: what the command line scores with

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
    ) -> Predictions:
        """Score files, folders (a folder of DICOM files is read as its studies and series) and globs, as `covidct
        predict` does: unreadable inputs are skipped by name (`Predictions.skipped`), DataError when nothing could
        be scored. threshold: None for the model's operating point; window: the CT window (centre, width) in HU."""
        from covidct.data.inputs import list_inputs
        from covidct.inference.predict import PredictOptions, predict_inputs

        items = [str(i) for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
        report: dict[str, Any] = {}
        options = PredictOptions(threshold, window, None, aggregate)
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


def evaluate(run: PathLike | list[PathLike], split: str = "test", on: str | None = None, **settings: Any) -> dict:
    """`covidct evaluate`: the metrics (with 95% intervals, the operating points chosen on validation, per group
    with `per_group`) of a run (or an ensemble of runs) on a split, or on a labelled set `on` (a source name,
    NAME=FOLDER or a CSV); also written to the run's eval folder. settings: EvalConfig's other fields."""
    from covidct.evaluation.evaluate import evaluate_run

    runs = [run] if isinstance(run, (str, Path)) else list(run)
    return evaluate_run(runs if len(runs) > 1 else runs[0], split, on=on, **settings)


def choose_threshold(
    run: PathLike, rule: str | float = "youden", on: str | None = None, min_sensitivity: float = 0.95
) -> dict:
    """`covidct threshold`: choose the run's operating point by a registered rule (covidct.evaluation.rules) on the
    validation split or on the labelled set `on`, or give a number; recorded where every path reads it."""
    from covidct.evaluation.thresholds import store_threshold

    return store_threshold(run, str(rule), min_sensitivity, on=on)


def train(config: TrainConfig | dict[str, Any] | PathLike, progress: bool = False) -> Path:
    """`covidct train`: a run of `config` (a TrainConfig, a dict of its fields, or a YAML file of them); returns
    the run folder, with its best checkpoint, operating point, detector and graph."""
    from covidct.training.fit import train as fit

    if isinstance(config, (str, Path)):
        config = TrainConfig.from_yaml(config)
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train takes a TrainConfig, a dict of its fields or a YAML file, got {type(config)!r}")
    return fit(config, progress=progress)
