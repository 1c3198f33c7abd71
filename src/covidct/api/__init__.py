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

from covidct.api.data import audit, download
from covidct.api.model import Model, load
from covidct.api.runs import choose_threshold, compare, evaluate, export, fit_detector, report, study
from covidct.api.serving import app, serve
from covidct.api.site import adapt, learning_curve, load_site
from covidct.api.training import cross_source, cross_validate, pretrain, train
from covidct.config import CurvePlan, PretrainConfig, ServeSettings, TrainConfig
from covidct.errors import ConfigError, CovidCTError, DataError, ModelError
from covidct.inference.results import Predictions, Result
from covidct.runs.records import Adaptation, CrossValidation

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
    "PretrainConfig",
    "Result",
    "ServeSettings",
    "TrainConfig",
    "adapt",
    "app",
    "audit",
    "choose_threshold",
    "compare",
    "cross_source",
    "cross_validate",
    "download",
    "evaluate",
    "export",
    "fit_detector",
    "learning_curve",
    "load",
    "load_site",
    "pretrain",
    "report",
    "serve",
    "study",
    "train",
]
