"""The operating point: chosen on validation (or a site's labelled set) or given, recorded in threshold.json,
written into the checkpoint and the export's card."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidct.config import EVAL_DEFAULTS
from covidct.errors import ConfigError, DataError, ModelError
from covidct.evaluation.metrics import binary_metrics
from covidct.evaluation.rules import RULES, choose_by_rule
from covidct.evaluation.scoring import eval_dataset, external_samples, load_classifier, predict_scores
from covidct.fileio import atomic_write, read_json
from covidct.inference.load import read_checkpoint
from covidct.inference.loaded import LoadedModel
from covidct.runs import RunDir, find_checkpoint
from covidct.runs.model_card import CARD_NAME, ModelCard
from covidct.runs.operating_point import OperatingPoint, checked_threshold


def store_threshold(
    run_dir: str | Path,
    choose: str,
    min_sensitivity: float = EVAL_DEFAULTS.min_sensitivity,
    checkpoint: str = "best",
    data_dir: str | Path | None = None,
    on: str | None = None,
) -> dict[str, Any]:
    """`covidct threshold`: choose a threshold on the validation split ('youden', 'sensitivity' or a number) and
    record it (record_operating_point), so evaluation, prediction and serving use it. Returns the record.

    on: choose it on that labelled set instead (a source, folder or CSV, as `evaluate --on`): a site's own
    validation data. Another hospital's scanners and windows shift a model's scores, so an operating point set on the
    training sources' validation split can miss (sars-cov-2-ct at covid-ct's 0.5: sensitivity 0.39, specificity
    0.62); the AUC does not change, only where the line is drawn. Figures on the same set at that threshold are then
    optimistic: evaluate the site's other patients."""
    run = RunDir.at(run_dir)
    ckpt_path = find_checkpoint(run.path, checkpoint)
    if on is not None and choose not in RULES:
        raise ConfigError(f"--on chooses the threshold on a set: --choose {' or '.join(RULES)}, not {choose!r}")
    if choose in RULES:
        model = load_classifier(ckpt_path, operating_point=False)  # a damaged record is what this replaces
        return choose_threshold(run, model, choose, min_sensitivity, on, data_dir)
    return record_operating_point(run, OperatingPoint(given_threshold(choose), "given", None, ckpt_path.name))


def choose_threshold(
    run: RunDir,
    model: LoadedModel,
    rule: str = "youden",
    min_sensitivity: float = EVAL_DEFAULTS.min_sensitivity,
    on: str | None = None,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The threshold of `model` (a checkpoint of `run`, scoring as it will be used) by `rule`, chosen on the
    validation split or on the labelled set `on`, and recorded (record_operating_point). Returns the record."""
    value, where, chosen = threshold_by_rule(run, model, rule, min_sensitivity, data_dir, on)
    point = OperatingPoint(
        threshold=float(value),
        rule=rule,
        chosen_on=where,
        checkpoint=model.card.checkpoint["file"],
        set=on,
        min_sensitivity=min_sensitivity if rule == "sensitivity" else None,
        metrics=chosen,
    )
    return record_operating_point(run, point)


def record_operating_point(run: RunDir, point: OperatingPoint) -> dict[str, Any]:
    """The one writer of a run's operating point (covidct threshold, the end of training, covidct adapt): the record
    (threshold.json, with the threshold it replaces), the checkpoint's hyperparameters (for a checkpoint used
    outside its run folder) and the export's model card when the run has an export. Returns the record."""
    previous = write_checkpoint_threshold(run.checkpoints_dir / point.checkpoint, point.threshold)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    point = replace(point, previous_threshold=previous, chosen_at=now)
    run.write_threshold_record(point)
    record = point.to_dict()
    card_path = run.export_dir / CARD_NAME
    if card_path.is_file():  # the export carries the same operating point: predict and serve load it
        # read as JSON, not as a card: a damaged threshold in it is what this mends
        card = read_json(card_path, "export again: covidct export RUN")
        card.update(threshold=point.threshold, threshold_chosen_on=point.where, operating_point=point.summary())
        ModelCard.from_dict(card, str(card_path)).write(card_path.parent)
        record["export_updated"] = str(card_path)
    return record


def threshold_by_rule(
    run: RunDir, model: LoadedModel, choose: str, min_sensitivity: float, data_dir: str | Path | None, on: str | None
) -> tuple[float, str, dict[str, Any]]:
    """(threshold, where it was chosen, the metrics there) of `model`'s scores by Youden's J or a minimum
    sensitivity, on the validation split or on the labelled set `on`."""
    if on is None:
        where, samples = "val", run.data(data_dir).splits["val"]
    else:
        where, samples, _ = external_samples(run, on, data_dir)
    _, labels, scores = predict_scores(model, eval_dataset(model, samples))
    if len(np.unique(labels)) < 2:
        what = "the validation split" if on is None else f"--on {on}"
        raise DataError(f"{what} holds one class only: no threshold can be chosen on it")
    value = choose_by_rule(choose, labels, scores, min_sensitivity)
    return value, where, binary_metrics(labels, scores, value).to_dict()


def given_threshold(choose: str) -> float:
    try:
        value = float(choose)
    except ValueError:
        raise ConfigError(f"--choose must be {', '.join(RULES)} or a number in [0, 1], got {choose!r}") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"--choose must be {', '.join(RULES)} or a number in [0, 1], got {choose!r}")
    return value


def write_checkpoint_threshold(ckpt_path: Path, value: float) -> float | None:
    """Store the threshold in the checkpoint's hyperparameters (for a checkpoint used outside its run folder);
    returns the one it replaces. Read with weights_only: a checkpoint carrying pickled code is refused, never run."""
    ckpt = read_checkpoint(ckpt_path)
    if not isinstance(ckpt.get("hyper_parameters"), dict):
        raise ModelError(f"checkpoint {ckpt_path} is not a covidct checkpoint (no hyperparameters)")
    previous = ckpt["hyper_parameters"].get("threshold", 0.5)  # kept in the record: `--choose PREVIOUS` restores it
    ckpt["hyper_parameters"]["threshold"] = float(value)
    atomic_write(ckpt_path, lambda p: torch.save(ckpt, p))
    try:
        return checked_threshold(previous, "previous")
    except ModelError:  # a damaged value being mended: there is no previous one to restore
        return None
