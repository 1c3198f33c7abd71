"""The JSON records of a run folder that many readers use, typed (covidct.fileio.cards.OpenCard): what each reader
relies on is declared and checked on read, the rest kept as written. A bad or hand-edited file is refused by name with
how to write it again, never a bare KeyError or JSONDecodeError deep in a command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from covidct.errors import ModelError
from covidct.fileio import read_csv, read_json
from covidct.fileio.cards import OpenCard

# A cross-validation folder (`covidct cv`): fold-<k>/run (a run folder per fold), oof_predictions.csv, CV_SUMMARY, the
# pool as one training split (EVERY_LABELLED) and, with --student, the one network trained on it (STUDENT).
CV_SUMMARY = "cv.json"
EVERY_LABELLED = "every_labelled.csv"  # the pool (training and validation images) as training, the test split kept
STUDENT = "student"


# A proportion or an AUC: in [0, 1], never NaN (a metric undefined on one class is null)
Share = Annotated[float, Field(ge=0, le=1)]


class EvaluationRecord(OpenCard):
    """eval-<name>/metrics.json, as `covidct evaluate` writes it: the fields compare, report, study and the model
    card read (a metric undefined on one class is null)."""

    model: str | list[str]
    split: str
    n: int = Field(ge=0)
    accuracy: Share | None
    sensitivity: Share | None
    specificity: Share | None
    auc: Share | None
    threshold: Share
    class_names: list[str] = Field(min_length=2, max_length=2)
    epoch: int | None = None
    ci95: dict[str, Any] = Field(default_factory=dict)


class SummaryRecord(OpenCard):
    """summary.json, as training writes it: the epochs and the monitored score every reader shows."""

    best_epoch: int | None = None
    epochs_run: int | None = None
    monitor: str | None = None
    best_score: float | None = None

    def training(self) -> dict[str, Any]:
        """The epochs and the monitored score, as the model card's "training" shows them."""
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "monitor": self.monitor,
            "best_score": self.best_score,
        }


def prediction_rows(path: Path) -> list[dict[str, Any]]:
    """An evaluation's predictions.csv, each row checked on read (a path, a label and a prediction of 0 or 1, a
    score in [0, 1]): what the report's misclassified images and compare's paired test rely on; a damaged row is
    refused naming its line, not read as a third class or met as a bare ValueError. Label, prediction and score come
    back as int, int and float."""
    rows = read_csv(path)
    for line, row in enumerate(rows, start=2):
        try:
            label, prediction, score = int(row["label"]), int(row["prediction"]), float(row["score"])
            fits = bool(row["path"]) and {label, prediction} <= {0, 1} and 0.0 <= score <= 1.0
        except (KeyError, ValueError):
            fits = False
        if not fits:
            cells = {k: row.get(k) for k in ("path", "label", "prediction", "score")}
            raise ModelError(
                f"{path} line {line}: a prediction needs a path, a label and a prediction of 0 or 1 and a score in "
                f"[0, 1], got {cells}; evaluate again (covidct evaluate RUN)"
            )
        row.update(label=label, prediction=prediction, score=score)
    return rows


@dataclass
class CrossValidation:
    """What `cross_validate` gives: the cv folder (a run per fold under fold-*/run, oof_predictions.csv) and its
    summary (cv.json: each fold's validation figures, their mean and sd, the out-of-fold figures)."""

    folder: Path
    summary: dict[str, Any]

    @classmethod
    def at(cls, folder: str | Path) -> CrossValidation:
        """The cross-validation in `folder`, its summary read (a ModelError naming the file when it cannot be)."""
        path = Path(folder) / CV_SUMMARY
        summary = read_json(path, "run covidct cv again")
        folds = summary.get("folds") if isinstance(summary, dict) else None
        if not isinstance(folds, list) or not all(isinstance(f, dict) and isinstance(f.get("run"), str) for f in folds):
            raise ModelError(f"{path} has no list of 'folds', each naming its 'run'; run covidct cv again")
        return cls(Path(folder), summary)

    @property
    def runs(self) -> list[Path]:
        """The fold runs, in fold order: evaluate them together as an ensemble; the student's teachers."""
        return [Path(f["run"]) for f in self.summary["folds"]]

    @property
    def every_labelled(self) -> Path:
        """The pool as one training split (a data CSV): a fixed-schedule run on it (`monitor="last"`) takes the
        out-of-fold operating point, summary["out_of_fold"]["youden_threshold"]."""
        return self.folder / EVERY_LABELLED

    @property
    def student(self) -> Path | None:
        """The run folder of the one network trained on every labelled image and distilled from the folds (`covidct
        cv --student`), or None."""
        path = self.folder / STUDENT
        return path if path.is_dir() else None


@dataclass
class Adaptation:
    """What `adapt` gives: the adapted model's run folder (load, predict, evaluate and export take it) and its
    record (strategy, the site, its grouped cross-validation figures, the shift between the sites)."""

    run: Path
    record: dict[str, Any]
