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

Adapt it to a site's own labelled patients: the learning curve, then the adapted model::

    site = cct.load_site("runs/demo", "site=/data/site.csv")    # checked: two classes, patients, no overlap
    curve = cct.learning_curve("runs/demo", site, ks=(2, 5, 10))
    adapted = cct.adapt("runs/demo", site)   # adapted.run: a run folder; adapted.record: how it validated

Training takes a configuration (a TrainConfig, a dict of its fields or a YAML file) and returns the run folder::

    run = cct.train({"data_dir": "data/covid-ct", "epochs": 12, "seed": 1}, progress=print)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from covidct.config import DEFAULT_STRATEGY, CurvePlan, ServeSettings, TrainConfig
from covidct.data.medical import LUNG_WINDOW
from covidct.errors import ConfigError, CovidCTError, DataError, ModelError
from covidct.inference.results import Predictions, Result
from covidct.runs.records import Adaptation, CrossValidation
from covidct.verdict import DEFAULT_AGGREGATION

if TYPE_CHECKING:  # the adaptation code is imported when used (it costs every command two seconds)
    from covidct.adaptation.site import Site
    from covidct.inference.run_detector import DetectorRecipe

__all__ = [
    "Adaptation",
    "ConfigError",
    "CovidCTError",
    "CrossValidation",
    "CurvePlan",
    "DataError",
    "Model",
    "ModelError",
    "Predictions",
    "Result",
    "ServeSettings",
    "adapt",
    "app",
    "choose_threshold",
    "compare",
    "cross_validate",
    "evaluate",
    "export",
    "fit_detector",
    "learning_curve",
    "load",
    "load_site",
    "report",
    "serve",
    "study",
    "train",
]

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


def evaluate(run: PathLike | list[PathLike], split: str = "test", on: str | None = None, **settings: Any) -> dict:
    """`covidct evaluate`: the metrics (with 95% intervals, the operating points chosen on validation, per group
    with `per_group`) of a run (or an ensemble of runs) on a split, or on a labelled set `on` (a source name,
    NAME=FOLDER or a CSV); also written to the run's eval folder. settings: EvalConfig's other fields."""
    from covidct.evaluation.evaluate import evaluate_run

    runs = [run] if isinstance(run, (str, Path)) else list(run)
    return evaluate_run(runs if len(runs) > 1 else runs[0], split, on=on, **settings)


def compare(runs: list[PathLike], split: str = "test") -> list[dict[str, Any]]:
    """`covidct compare`: evaluated runs side by side, a row each (metrics with intervals, DeLong's paired test
    against the first run, the settings that differ); `pandas.DataFrame(rows)` makes a table of it.

    >>> rows = cct.compare(["runs/a", "runs/b"])  # doctest: +SKIP
    """
    from covidct.evaluation.compare import compare_runs

    return compare_runs(list(runs), split)


def report(run: PathLike, split: str = "test", data_dir: PathLike | None = None) -> Path:
    """`covidct report`: RUN/report.html, one self-contained page (evaluating the run on `split` first if needed)."""
    from covidct.reporting.html import build_report

    return build_report(run, split, data_dir)


def study(run: PathLike) -> str:
    """`covidct study`: the seed study's published table beside the run's test figures, as text."""
    from covidct.reporting.study import study_text

    return study_text(run)


def export(
    run: PathLike, format: str = "both", out: PathLike | None = None, data_dir: PathLike | None = None
) -> list[Path]:
    """`covidct export`: the run's best model as safetensors (PyTorch: Grad-CAM, adaptation) and an ONNX graph checked
    against PyTorch on the run's validation images (or `data_dir`'s), with its card and detector, in `out` (default
    RUN/export); format: both, safetensors or onnx. Returns the files written; `load(out)` scores with them."""
    from covidct.inference.export import export_run

    return export_run(run, format, out, data_dir)


def choose_threshold(
    run: PathLike,
    rule: str | float = "youden",
    on: str | None = None,
    min_sensitivity: float = 0.95,
    checkpoint: str = "best",
    data_dir: PathLike | None = None,
) -> dict:
    """`covidct threshold`: choose the run's operating point by a registered rule (covidct.evaluation.rules) on the
    validation split or on the labelled set `on`, or give a number; recorded where every path reads it.
    checkpoint: best or last; data_dir: instead of the run's own."""
    from covidct.evaluation.thresholds import store_threshold

    return store_threshold(run, str(rule), min_sensitivity, checkpoint, str(data_dir) if data_dir else None, on)


def train(
    config: TrainConfig | dict[str, Any] | PathLike,
    progress: bool | Callable[[dict[str, Any]], None] = False,
    run_dir: PathLike | None = None,
    resume: bool = False,
) -> Path:
    """`covidct train`: a run of `config` (a TrainConfig, a dict of its fields, or a YAML file of them); returns
    the run folder, with its best checkpoint, operating point, detector and graph. progress: True for a progress
    bar, or a function called after each epoch with its row of metrics.csv (epoch, epochs, train_loss, val_auc, ...).
    run_dir: the folder to create (default under config.out); resume: continue run_dir from its last checkpoint.

    Example::

        run = cct.train("configs/default.yaml", progress=lambda row: print(row["epoch"], row["val_auc"]))
    """
    from covidct.training.fit import train as fit

    config = _train_config(config)
    where = {"run_dir": run_dir, "resume": resume}
    if callable(progress):
        return fit(config, progress=False, on_epoch=progress, **where)
    return fit(config, progress=bool(progress), **where)


def _train_config(config: TrainConfig | dict[str, Any] | PathLike) -> TrainConfig:
    """A TrainConfig from itself, a dict of its fields or a YAML file of them (each checked)."""
    if isinstance(config, (str, Path)):
        config = TrainConfig.from_yaml(config)
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"takes a TrainConfig, a dict of its fields or a YAML file, got {type(config)!r}")
    return config


def load_site(run: PathLike, site: str, allow_overlap: bool = False, group_duplicates: bool = True) -> Site:
    """A site's labelled images (NAME=FOLDER, a folder or a CSV with a group column: groups are patients), checked
    against `run`: two classes, no image the run trained on (unless allow_overlap), no patient holding both classes.
    group_duplicates: near-duplicate images are put in one group (a patient's slices that repeat).

    Example::

        site = cct.load_site("runs/demo", "site=/data/site.csv")
        site.group_counts()        # patients per class: {0: 40, 1: 38}
    """
    from covidct.adaptation.site import load_site as load

    return load(Path(run), site, allow_overlap, group_duplicates)


def learning_curve(
    run: PathLike, site: str | Site, plan: CurvePlan | None = None, out: PathLike | None = None, **fields: Any
) -> list[dict[str, Any]]:
    """`covidct adapt --curve`: how each adaptation strategy does with k labelled patients (groups) per class of
    the site (a `load_site` result, or its spec loaded with the defaults), each k drawn `draws` times and scored on
    the site's other patients; a row per strategy and k (auc, auc_ci, auc_worst, ...), also written with a table and
    a plot to `out` (default RUN/curve-NAME/). plan: a CurvePlan, or its fields as keywords.

    Example::

        curve = cct.learning_curve("runs/demo", "site=/data/site.csv", ks=(2, 5, 10))
    """
    from covidct.adaptation.curve import run_curve

    if plan is None:
        try:
            plan = CurvePlan(**fields)
        except TypeError:
            known = [f.name for f in dataclasses.fields(CurvePlan)]
            raise ConfigError(f"learning_curve takes the plan's fields {known}, got {sorted(fields)}") from None
    elif fields:
        raise ConfigError(f"learning_curve: give the plan or its fields {sorted(fields)}, not both")
    site = load_site(run, site) if isinstance(site, str) else site
    return run_curve(Path(run), site, Path(out) if out else Path(run) / f"curve-{site.name}", plan)


def adapt(run: PathLike, site: str | Site, strategy: str = DEFAULT_STRATEGY, out: PathLike | None = None) -> Adaptation:
    """`covidct adapt`: the model of `run` adapted to all of the site's labelled images (a `load_site` result, or its
    spec loaded with the defaults) by `strategy`, written as a new run folder beside `run` (or under `out`), with the
    operating point chosen on the site's grouped cross-validation.

    Example::

        adapted = cct.adapt("runs/demo", "site=/data/site.csv")
        print(adapted.record["text"])
    """
    from covidct.adaptation.adapt import adapt_run
    from covidct.runs import RunDir

    site = load_site(run, site) if isinstance(site, str) else site
    folder = adapt_run(Path(run), site, Path(out) if out else Path(run).parent, strategy)
    return Adaptation(folder, RunDir(folder).summary()["adaptation"])


def cross_validate(
    config: TrainConfig | dict[str, Any] | PathLike,
    folds: int = 5,
    progress: bool = False,
    group_duplicates: bool = True,
    student: bool = False,
) -> CrossValidation:
    """`covidct cv`: `folds` runs of `config` on the training and validation images together, folds kept apart by
    group (a source paper, a patient; with group_duplicates, near-duplicate images too), each fold's epoch and
    operating point chosen on its own held-out fold; every image scored once out of fold. With `student`
    (`--student`), then one network on every labelled image, distilled from the folds (`cv.student`).

    Example::

        cv = cct.cross_validate("configs/default.yaml", folds=5)
        cv.summary["out_of_fold"]["auc"], cv.runs
    """
    from covidct.studies.cv import run_cv, train_student

    config = _train_config(config)
    folder = run_cv(config, folds, progress=progress, group_duplicates=group_duplicates)
    if student:
        train_student(CrossValidation.at(folder), config, progress=progress)
    return CrossValidation.at(folder)


def app(model: Model | PathLike, settings: ServeSettings | None = None) -> Any:
    """The REST API of `covidct serve` as a FastAPI app, for a test client or to mount in another server (the same
    routes, limits, API keys and shift window; settings: a ServeSettings).

    Example::

        from fastapi.testclient import TestClient
        client = TestClient(cct.app("runs/demo/export"))
        client.post("/api/v1/predict", files={"file": open("slice.png", "rb")}).json()
    """
    from covidct.inference.serve import app_for

    loaded = model.loaded if isinstance(model, Model) else load(model).loaded
    return app_for(loaded, settings or ServeSettings())


def serve(
    model: Model | PathLike, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None
) -> None:
    """`covidct serve`: the model's web page and REST API with uvicorn, until stopped (a path is loaded once, with a
    thread per core when batching)."""
    from covidct.inference.serve import serve as run_server

    run_server(model.loaded if isinstance(model, Model) else model, host, port, settings)


def fit_detector(
    run: PathLike, recipe: DetectorRecipe | None = None, data_dir: PathLike | None = None, site: str | None = None
) -> dict[str, Any]:
    """`covidct ood fit`: (re)fit the run's out-of-distribution detector on its training images, thresholded on its
    validation images (one per training source), and save it with the run and its export; returns what it is
    (method, threshold, images, share of validation flagged). An adapted run keeps its site's images as seen (from
    its record, or `site`: NAME=PATH). recipe: a DetectorRecipe (method, percentile; covidct.ood.fit).

    Example::

        cct.fit_detector("runs/demo")["val_flagged"]     # about 0.05 by construction
    """
    from covidct.adaptation.site import adapted_site
    from covidct.inference.run_detector import DEFAULT_RECIPE, fit_for_run

    adapted = adapted_site(Path(run), site)  # an adapted run's detector keeps its site's own
    seen = None if adapted is None else adapted.seen_samples()
    return fit_for_run(run, recipe or DEFAULT_RECIPE, data_dir, seen).describe()
