"""The verdict: the one place where a score and the out-of-distribution detector's outputs become what a user reads
(a label, a flag and its reason), and where slices become a series, volume or study. predict's CSV and JSON, serve's
answers, evaluate's predictions.csv and the CLI messages render these records; none of them decides anything itself.

- An image is labelled positive when its score is at least the threshold (`label_of`).
- An image is flagged when the detector flags its pixels or its acquisition (a DICOM or NIfTI header) is one the
  training images did not hold; the acquisition reason wins (`judge_image`).
- A volume's score is an aggregation of its counted slices' scores (AGGREGATIONS; default top10_mean: a few clearly
  abnormal slices make a volume positive, as a radiologist reads one); the counted slices are those showing lung
  (data/lungmask.py), all when none does or there are no HU (`summarise_volume`).
- A volume is flagged when at least OOD_STUDY_SHARE of its counted slices are (`volume_ood`).
- A study's result is its lung reconstruction's, else its series with the most slices in lung (`study_series`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from covidct.data.lungmask import has_lung
from covidct.errors import DataError

TOP_K = 5  # slices listed (and shown with --cam) per series


def _top_fraction_mean(scores: np.ndarray, fraction: float = 0.1) -> float:
    k = max(1, math.ceil(fraction * len(scores)))
    return float(np.sort(scores)[-k:].mean())


AGGREGATIONS: dict[str, tuple[Callable[[np.ndarray], float], str]] = {
    "top10_mean": (_top_fraction_mean, "mean of the top-k slice scores, k = max(1, ceil(0.1 x slices))"),
    "top25_mean": (lambda s: _top_fraction_mean(s, 0.25), "mean of the top-k slice scores, k = ceil(0.25 x slices)"),
    "mean": (lambda s: float(np.mean(s)), "mean of all slice scores"),
    "median": (lambda s: float(np.median(s)), "median slice score"),
    "max": (lambda s: float(np.max(s)), "highest slice score"),
}
DEFAULT_AGGREGATION = "top10_mean"
STUDY_RULE = (
    "a study's result is that of its lung reconstruction (series description or kernel naming lung/sharp); "
    "without one, that of its series with the most slices in lung"
)
# Why an image or slice is flagged: its pixels (the detector), or its acquisition (ood/acquisition.py: a scanner,
# kernel or spacing the training images did not hold), which then flags every slice of the series.
IMAGE_UNLIKE = "the image is unlike the training images"
# A series, volume or study is out of distribution when at least this share of its counted slices is: five times
# the share of validation images flagged by construction (5%), so a few odd slices of a familiar scan do not flag it.
OOD_STUDY_SHARE = 0.25
OOD_RULE = f"out of distribution when >= {OOD_STUDY_SHARE:.0%} of its counted slices are flagged"


def positive(scores: Any, threshold: float) -> Any:
    """The label rule, its one home: a score is positive (the second class) when it is at or above the threshold.
    Takes a number or an array (then an array of booleans)."""
    return scores >= threshold


def label_of(score: float, threshold: float, class_names: Sequence[str]) -> str:
    """The class name of a score at the operating point (positive: the second).

    >>> label_of(0.5, 0.5, ["NonCOVID", "COVID"]), label_of(0.49, 0.5, ["NonCOVID", "COVID"])
    ('COVID', 'NonCOVID')
    """
    return class_names[1] if positive(score, threshold) else class_names[0]


def checked_aggregation(how: str) -> str:
    if how not in AGGREGATIONS:
        raise DataError(f"aggregation must be one of {sorted(AGGREGATIONS)}, got {how!r}")
    return how


def aggregate_volume(slice_scores: np.ndarray, how: str = DEFAULT_AGGREGATION) -> float:
    """The volume score of its (counted) slices' scores."""
    if len(slice_scores) == 0:
        raise DataError("a volume with no slices cannot be scored")
    return AGGREGATIONS[checked_aggregation(how)][0](np.asarray(slice_scores, dtype=float))


@dataclass(frozen=True)
class ImageVerdict:
    """One image or slice, as every output shows it. in_distribution and ood_reason are None without a detector."""

    score: float
    label: str
    threshold: float
    ood_score: float | None = None
    in_distribution: bool | None = None
    ood_reason: str | None = None


# A verdict's flag (in_distribution: True, False, or None when no detector checked it) rendered per output format,
# each in one place: JSON answers and reports carry the bool or null as it is; CSV files (predict's, evaluate's
# predictions.csv) write FLAG_CELLS, read back by flag_of_cell; the console marks a flagged input OOD_MARK.
FLAG_CELLS: dict[bool | None, str] = {True: "1", False: "0", None: ""}
OOD_MARK = " [OUT OF DISTRIBUTION]"


def flag_cell(in_distribution: bool | None) -> str:
    """A verdict's flag as a CSV cell: "1" in distribution, "0" flagged, "" not checked.

    >>> [flag_cell(f) for f in (True, False, None)]
    ['1', '0', '']
    """
    return FLAG_CELLS[None if in_distribution is None else bool(in_distribution)]


def flag_of_cell(cell: str | None) -> bool | None:
    """A CSV cell written by flag_cell, read back (None: not checked); DataError for anything else."""
    cell = "" if cell is None else str(cell).strip()
    for flag, text in FLAG_CELLS.items():
        if cell == text:
            return flag
    raise DataError(f"in_distribution must be 1, 0 or empty, got {cell!r}")


def ood_mark(in_distribution: bool | None) -> str:
    """A verdict's flag on the console: the mark after a flagged input's line, nothing otherwise."""
    return OOD_MARK if in_distribution is False else ""


def ood_reason(flagged: bool, unseen: str | None) -> tuple[bool, str]:
    """(in_distribution, reason) of an input the detector `flagged` (or not) whose acquisition is `unseen` for the
    reason given (None: seen, or not recorded)."""
    inside = not flagged and unseen is None
    return inside, "" if inside else unseen or IMAGE_UNLIKE


def judge_image(
    score: float, threshold: float, class_names: Sequence[str], ood: tuple[float, bool] | None, unseen: str | None
) -> ImageVerdict:
    """The verdict on one image: its label at `threshold`, and with a detector (`ood`: its score and flag) whether
    it looks like the training images and was acquired as they were."""
    label = label_of(score, threshold, class_names)
    if ood is None:
        return ImageVerdict(score, label, threshold)
    inside, reason = ood_reason(ood[1], unseen)
    return ImageVerdict(score, label, threshold, float(ood[0]), inside, reason)


def flags_with_acquisition(flags: np.ndarray, unseen: Sequence[str | None]) -> np.ndarray:
    """The detector's flags of a set of images, each also flagged when its acquisition was not seen in training."""
    return np.asarray(flags, dtype=bool) | np.array([u is not None for u in unseen], dtype=bool)


def volume_ood(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The share of `entries` (counted slices, each with "in_distribution" and "ood_reason" when checked) that are
    flagged, and the volume's flag by OOD_RULE with its commonest reason; {} when the model has no detector."""
    checked = [e for e in entries if "in_distribution" in e]
    if not checked:
        return {}
    share = float(np.mean([not e["in_distribution"] for e in checked]))
    reasons = [e["ood_reason"] for e in checked if e.get("ood_reason")]
    reason = max(set(reasons), key=reasons.count) if share >= OOD_STUDY_SHARE else ""
    return {"ood_fraction": round(share, 4), "in_distribution": share < OOD_STUDY_SHARE, "ood_reason": reason}


def summarise_volume(entries: list[dict[str, Any]], how: str) -> dict[str, Any]:
    """Which slices count (those in lung; all when none shows lung or there are no HU), the volume score, its
    out-of-distribution verdict (volume_ood) and its top-k slices. Marks each scored entry's "counted"."""
    scored = [e for e in entries if "score" in e]
    if not scored:
        raise DataError("no slice of this volume could be read: " + "; ".join(e["problem"] for e in entries[:3]))
    with_hu = [e for e in scored if "lung_fraction" in e]
    in_lung = [e for e in with_hu if has_lung(e["lung_fraction"])]
    if in_lung:
        counted, rule = in_lung, "slices in lung (lung mask from HU)"
    elif with_hu:
        counted, rule = scored, "all slices (no slice showed lung in the HU mask)"
    else:
        counted, rule = scored, "all slices (no HU: no lung mask)"
    for e in scored:
        e["counted"] = any(e is c for c in counted)
    top = sorted(counted, key=lambda e: -e["score"])[:TOP_K]
    return {
        "score": aggregate_volume(np.array([e["score"] for e in counted]), how),
        "slices": len(entries),
        "slices_scored": len(scored),
        "slices_in_lung": len(in_lung),
        "slices_counted": len(counted),
        "counted": rule,
        "unreadable": [e["problem"] for e in entries if e.get("problem")],
        **volume_ood(counted),
        "top_slices": [{"slice": e["index"], "score": round(e["score"], 6)} for e in top],
    }


Series = TypeVar("Series")


def study_series(results: list[tuple[Series, dict[str, Any]]], is_lung: Callable[[Series], bool]) -> tuple:
    """The (series, summary) a study's result comes from, by STUDY_RULE; its out-of-distribution verdict is that
    series' too (study_ood)."""
    lung_recon = [r for r in results if is_lung(r[0])]
    return max(lung_recon or results, key=lambda r: (r[1]["slices_in_lung"], r[1]["slices"]))


def study_ood(summary: dict[str, Any]) -> dict[str, Any]:
    """A study's out-of-distribution verdict: that of the series its result comes from (STUDY_RULE)."""
    return {k: summary[k] for k in ("ood_fraction", "in_distribution", "ood_reason") if k in summary}
