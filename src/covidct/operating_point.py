"""The decision threshold's one rule of validity: a finite probability in [0, 1]. Every reader of a threshold (the
run's threshold.json, a checkpoint's hyperparameters, an export's model.json) passes it through `checked_threshold`,
so that a damaged or hand-edited record is refused by name instead of labelling every image one way in silence."""

from __future__ import annotations

import math
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
