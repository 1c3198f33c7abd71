"""The detector's card (ood.json), typed: every field it may hold, validated on read and on write
(covidct.fileio.cards.StrictCard: a missing, mistyped or unknown field is refused by name). The arrays are in
ood.safetensors; the shift reference's and the acquisition record's own fields are checked by their owners
(ShiftReference.from_arrays, AcquisitionRecord.from_json)."""

from __future__ import annotations

from typing import Any, Literal

from covidct.fileio.cards import StrictCard

FORMAT = "covidct-ood/1"
REFIT = "refit it with covidct ood fit RUN"


class HalfCard(StrictCard):
    """The framing or pixel half: which image statistics, its reference (the framing's two, the pixels' one), its
    threshold and method."""

    statistics: list[str]
    threshold: float
    method: str
    refs: tuple[float, float] | None = None  # framing
    ref: float | None = None  # pixels


class DetectorCard(StrictCard):
    """One detector: how it scores, its threshold, and the record of its fit. `sources`: one card per further
    training source (without a format of their own), the whole set thresholded at `own_threshold`."""

    format: Literal["covidct-ood/1"] | None = None
    method: str
    k: int = 1
    architecture: str
    feature_dim: int
    threshold: float
    percentile: float
    # the fit's record
    fitted_on: list[str] | None = None
    split: str | None = None
    threshold_on: str | None = None
    weights_sha256: str | None = None  # the model it was fitted for (load.check_made_from)
    source: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    val_flagged: float | None = None
    fit_seconds: float | None = None
    per_source: list[dict[str, Any]] | None = None
    # its parts
    acquisitions: Any = None  # checked by AcquisitionRecord.from_json, naming its fields
    framing: HalfCard | None = None
    pixels: HalfCard | None = None
    sources: list[DetectorCard] | None = None
    own_threshold: float | None = None
    shift: Any = None  # checked by ShiftReference.from_arrays


def checked_card(data: Any, where: str) -> dict[str, Any]:
    """ood.json's parsed content, validated: the record as JSON values, absent fields left out."""
    return DetectorCard.read(data, where, REFIT).record()
