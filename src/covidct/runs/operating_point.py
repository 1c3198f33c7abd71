"""The decision threshold's one rule of validity: a finite probability in [0, 1]. Every reader of a threshold (the
run's threshold.json, a checkpoint's hyperparameters, an export's model.json) passes it through `checked_threshold`,
so that a damaged or hand-edited record is refused by name instead of labelling every image one way in silence; the
run's record itself is an OperatingPoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from covidct.errors import ModelError

FIX = "choose it again: covidct threshold RUN --choose youden (or a number in [0, 1])"


def checked_threshold(value: Any, where: str) -> float:
    """`value` as a float when it is a finite number in [0, 1]; else a ModelError naming `where` (a file and its
    field) and how to fix it. Booleans and strings are refused: JSON's true is not a threshold."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(f"{where} must be a number in [0, 1], got {value!r}; {FIX}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ModelError(f"{where} must be a finite number in [0, 1], got {number!r}; {FIX}")
    return number


RULES = ("youden", "youden-bootstrap", "sensitivity", "given")


@dataclass(frozen=True)
class OperatingPoint:
    """The run's threshold record (threshold.json), read and written only through RunDir: the threshold, by what
    rule and on what set it was chosen, for which checkpoint, and the metrics where it was chosen. chosen_on: "val",
    a site's name, or None when the value was given."""

    threshold: float
    rule: str = "given"
    chosen_on: str | None = None
    checkpoint: str | None = None  # the checkpoint file it was chosen for; None: the best one
    set: str | None = None
    min_sensitivity: float | None = None
    previous_threshold: float | None = None
    metrics: dict[str, Any] | None = None
    how: str | None = None
    chosen_at: str | None = None  # UTC, ISO 8601: when it was recorded

    def summary(self) -> dict[str, Any]:
        """What the model card says of it: the threshold, by what rule, on what, when. The card's own 'threshold' must
        equal this one's (ModelCard checks it): a copy edited alone is refused, not chosen."""
        return {
            "threshold": self.threshold,
            "rule": self.rule,
            "chosen_on": self.where,
            "set": self.set,
            "chosen_at": self.chosen_at,
        }

    @property
    def where(self) -> str:
        """Where the line was drawn, as the model card says it: "val", a site, or "given"."""
        return self.chosen_on or "given"

    def to_dict(self) -> dict[str, Any]:
        """The record's fields as the file holds them; the metrics are val_metrics when chosen on validation,
        else set_metrics."""
        record = {k: v for k, v in asdict(self).items() if k not in ("metrics", "how")}
        if self.how is not None:
            record["how"] = self.how
        if self.metrics is not None:
            record["val_metrics" if self.set is None else "set_metrics"] = self.metrics
        return record

    @classmethod
    def from_dict(cls, data: Any, where: str) -> OperatingPoint:
        """A record as read from `where` (a file), each field checked: a threshold that is not a finite number in
        [0, 1], a missing one, an unknown rule or field is refused by name with how to fix it."""
        if not isinstance(data, dict) or "threshold" not in data:
            raise ModelError(f"{where} has no 'threshold'; {FIX}")
        data = dict(data)
        on_val, on_set = data.pop("val_metrics", None), data.pop("set_metrics", None)
        unknown = sorted(set(data) - {f.name for f in fields(cls)} - {"metrics"})
        if unknown:
            raise ModelError(f"{where} has unknown field(s) {unknown}; {FIX}")
        if data.get("rule", "given") not in RULES:
            raise ModelError(f"{where}: 'rule' must be one of {RULES}, got {data['rule']!r}; {FIX}")
        data["threshold"] = checked_threshold(data["threshold"], f"{where}: 'threshold'")
        previous = data.get("previous_threshold")
        if previous is not None:
            data["previous_threshold"] = checked_threshold(previous, f"{where}: 'previous_threshold'")
        return cls(**{**data, "metrics": on_val if on_val is not None else on_set})
