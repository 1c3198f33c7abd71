"""covidct.api's training: a run from a configuration (`train`), k-fold cross-validation and its student
(`cross_validate`), self-supervised pretraining (`pretrain`) and the leave-one-source-out matrix (`cross_source`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from covidct.api.model import PathLike
from covidct.config import PretrainConfig, TrainConfig
from covidct.errors import ConfigError
from covidct.runs.records import CrossValidation


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
    return _settings(TrainConfig, config)


def _settings(cls: Any, config: Any) -> Any:
    """Settings of class `cls` (TrainConfig, PretrainConfig) from themselves, a dict of their fields or a YAML file
    of them (each checked); ConfigError for anything else."""
    if isinstance(config, (str, Path)):
        config = cls.from_yaml(config)
    elif isinstance(config, dict):
        config = cls.from_dict(config)
    if not isinstance(config, cls):
        raise ConfigError(f"takes a {cls.__name__}, a dict of its fields or a YAML file, got {type(config)!r}")
    return config


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
    cv = CrossValidation.at(run_cv(config, folds, progress=progress, group_duplicates=group_duplicates))
    if student:  # cv.student finds its folder once it is there
        train_student(cv, config, progress=progress)
    return cv


def pretrain(
    config: PretrainConfig | dict[str, Any] | PathLike,
    progress: bool = False,
    run_dir: PathLike | None = None,
    resume: bool = False,
) -> Path:
    """`covidct pretrain`: self-supervised pretraining of `config.model` on unlabelled CT (a PretrainConfig, a dict of
    its fields or a YAML file); returns the run folder, whose backbone `train` starts from with `init=RUN`.

    Example::

        run = cct.pretrain({"data_dir": "data/covid-ct", "method": "simclr", "epochs": 50})
    """
    from covidct.training.pretrain import pretrain as fit

    config = _settings(PretrainConfig, config)
    return fit(config, progress=progress, run_dir=Path(run_dir) if run_dir else None, resume=resume)


def cross_source(
    config: TrainConfig | dict[str, Any] | PathLike,
    out: PathLike = "crosssource",
    seeds: list[int] | None = None,
    n_bootstrap: int = 0,
    progress: bool = False,
) -> Path:
    """`covidct crosssource`: with two or more `config.sources`, a model trained on each source alone and on all but
    one, each scored on every source (held out: all of it); the train x test-source matrix in `out` (matrix.md,
    .csv, .json, .png). seeds: one matrix per seed and their mean and spread (seeds.md). Returns the folder.

    Example::

        folder = cct.cross_source({"sources": ["covid-ct", "sars-cov-2-ct"], "epochs": 12})
    """
    from covidct.studies.crosssource import run_crosssource, run_seeds

    config = _train_config(config)
    if not config.sources or len(config.sources) < 2:
        raise ConfigError("crosssource needs at least two sources (--source NAME, twice or more)")
    if seeds:
        return run_seeds(config, list(seeds), out, progress=progress, n_bootstrap=n_bootstrap)
    return run_crosssource(config, out, progress=progress, n_bootstrap=n_bootstrap)
