"""The JSON records of a run folder that many readers use, typed (covidct.fileio.cards.OpenCard): what each reader
relies on is declared and checked on read, the rest kept as written. A bad or hand-edited file is refused by name with
how to write it again, never a bare KeyError or JSONDecodeError deep in a command."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from covidct.fileio.cards import OpenCard


class EvaluationRecord(OpenCard):
    """eval-<name>/metrics.json, as `covidct evaluate` writes it: the fields compare, report, study and the model
    card read (a metric undefined on one class is null)."""

    model: str | list[str]
    split: str
    n: int = Field(ge=0)
    accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    auc: float | None
    threshold: float
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
