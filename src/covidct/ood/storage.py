"""A detector's files, written and read back: ood.safetensors (every array: the features', the halves', the other
sources', the shift reference's) and ood.json (the typed card, ood/card.py), each checked on read, a damaged or
non-finite one refused by name with how to refit it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import ModelError
from covidct.fileio import read_json
from covidct.ood.acquisition import AcquisitionRecord
from covidct.ood.card import checked_card
from covidct.ood.detector import CARD, DEFAULT_K, METHODS, PERCENTILES, WEIGHTS, OODDetector
from covidct.ood.distances import ood_scores
from covidct.ood.framing import FRAMING_STATISTICS
from covidct.ood.pixels import PIXEL_STATISTICS
from covidct.ood.shift import ShiftReference


def save_detector(detector: OODDetector, folder: str | Path) -> Path:
    """ood.safetensors (the arrays) and ood.json (the rest) in `folder`; written atomically."""
    from safetensors.numpy import save_file

    from covidct.fileio import atomic_write, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {**_all_arrays(detector), **({} if detector.reference is None else detector.reference.arrays())}
    card = checked_card(detector.describe(), str(folder / CARD))  # the card as every reader will check it
    atomic_write(folder / WEIGHTS, lambda p: save_file(arrays, str(p)))
    write_json(folder / CARD, card)
    return folder / CARD


def load_detector(folder: str | Path) -> OODDetector | None:
    """The detector saved in `folder`, or None when there is none. Refuses a damaged one with a clear error."""
    folder = Path(folder)
    card_path, weights = folder / CARD, folder / WEIGHTS
    if not card_path.is_file():
        return None
    where = str(card_path)
    try:
        card = read_json(card_path, "fit it again: covidct ood fit RUN")
        from safetensors.numpy import load_file

        arrays = load_file(str(weights))
    except Exception as e:  # OSError, JSON, safetensors' own SafetensorError: all "unreadable"
        raise ModelError(
            f"out-of-distribution detector in {folder} cannot be read ({type(e).__name__}: {e}); "
            "refit it with covidct ood fit RUN"
        ) from None
    card = checked_card(card, where)
    detector = _from_card(card, arrays, "", where)
    if card.get("acquisitions") is not None:
        detector.acquisitions = AcquisitionRecord.from_json(card["acquisitions"], where)
    others = card.get("sources") or []
    if not isinstance(others, list) or not all(isinstance(c, dict) for c in others):
        raise ModelError(f'{where}: "sources" must be a list of the other sources\' detectors; refit it')
    detector.others = [_from_card(c, arrays, f"sources.{i}.", where) for i, c in enumerate(others)]
    if others:
        try:
            detector.own_threshold = float(card["own_threshold"])
        except (KeyError, TypeError, ValueError) as e:
            raise _damaged(where, "first source's own threshold", e) from None
    for i, other in enumerate(detector.others):
        if (other.architecture, other.feature_dim, other.framing is None, other.pixels is None) != (
            detector.architecture,
            detector.feature_dim,
            detector.framing is None,
            detector.pixels is None,
        ):
            name = other.info.get("source", "?")
            raise ModelError(
                f"{where}: the detector of source {i + 2} ({name}) does not match the first "
                "source's (architecture, features or halves); refit it"
            )
    _check_finite(detector, where)
    if card.get("shift") is not None:
        detector.reference = ShiftReference.from_arrays(arrays, card["shift"], where)
    return detector


def _from_card(card: Any, arrays: dict[str, np.ndarray], prefix: str, where: str) -> OODDetector:
    """One source's detector from its ood.json record and the arrays named `prefix`...; a damaged one refused."""
    try:
        detector = OODDetector(
            method=str(card["method"]),
            architecture=str(card["architecture"]),
            feature_dim=int(card["feature_dim"]),
            center=arrays[prefix + "center"].astype(np.float64),
            scale=arrays[prefix + "scale"].astype(np.float64),
            bank=arrays[prefix + "bank"].astype(np.float64),
            location=arrays[prefix + "location"].astype(np.float64),
            threshold=float(card["threshold"]),
            percentile=float(card["percentile"]),
            k=int(card.get("k", DEFAULT_K)),
            info={k: v for k, v in card.items() if k not in _CARD_KEYS},
        )
    except Exception as e:  # missing keys or arrays, wrong types: all "unreadable"
        raise ModelError(
            f"out-of-distribution detector {where} cannot be read ({type(e).__name__}: {e}); "
            "refit it with covidct ood fit RUN"
        ) from None
    if (
        detector.method not in METHODS
        or detector.center.shape != (detector.feature_dim,)
        or (detector.method == "mahalanobis" and detector.location.shape != (detector.bank.shape[1] + 1,))
    ):
        what = f"method {detector.method!r}, {detector.center.shape} centre for {detector.feature_dim} features"
        raise ModelError(f"out-of-distribution detector {where} is damaged ({what}); refit it")
    wrong = _out_of_range(detector)
    if wrong:
        raise ModelError(f"out-of-distribution detector {where} is damaged ({wrong}); refit it: covidct ood fit RUN")
    if card.get("framing") is not None:
        detector.framing, detector.refs = _framing_half(card["framing"], arrays, where, prefix)
    if card.get("pixels") is not None and detector.framing is not None:
        detector.pixels, detector.pixel_ref = _pixels_half(card["pixels"], arrays, where, prefix)
    return detector


def _out_of_range(detector: OODDetector) -> str:
    """What of a detector read back cannot be what fitting made ("" when nothing): k under 1, a percentile outside
    the fit's range, a negative threshold (every image flagged), or arrays that do not score one image (a knn
    method on a Mahalanobis detector's arrays ends in scikit-learn's traceback otherwise)."""
    if detector.k < 1 or not PERCENTILES[0] <= detector.percentile < PERCENTILES[1] or detector.threshold < 0:
        return f"k {detector.k}, percentile {detector.percentile}, threshold {detector.threshold}"
    try:
        one = np.ones((1, detector.feature_dim))
        with np.errstate(all="ignore"):
            score = ood_scores(detector.method, one, detector.bank, detector.location, detector.k)
    except Exception as e:  # shapes that do not fit: numpy's or scikit-learn's ValueError
        return f"its {detector.method} arrays do not score an image: {type(e).__name__}"
    return "" if score.shape == (1,) else f"its {detector.method} arrays score one image as {score.shape}"


def _check_finite(detector: OODDetector, where: str) -> None:
    """Refuse a detector holding a NaN or infinite threshold, reference or array: every comparison with NaN is
    false, so such a detector would flag nothing and the check would be off without a word."""
    values = {
        "threshold": detector.threshold,
        "percentile": detector.percentile,
        "refs": detector.refs,
        "pixel_ref": detector.pixel_ref,
        "own_threshold": detector.own_threshold or 0.0,
    }
    for name, half in (("framing", detector.framing), ("pixels", detector.pixels)):
        if half is not None:
            values[f"{name}.threshold"] = half.threshold
    for i, other in enumerate(detector.others):
        values[f"sources.{i}.threshold"] = other.threshold
    values.update({f"array {k}": v for k, v in _all_arrays(detector).items()})
    for name, value in values.items():
        if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            raise ModelError(
                f"{where}: {name} is not a finite number (NaN or infinite), so the out-of-distribution "
                "check would flag nothing; refit the detector: covidct ood fit RUN"
            )


def _all_arrays(detector: OODDetector, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array of the detector, its halves ("framing.", "pixels.") and its other sources ("sources.I.")."""
    arrays = {prefix + k: v for k, v in _arrays(detector).items()}
    for name, half in (("framing", detector.framing), ("pixels", detector.pixels)):
        if half is not None:
            arrays.update({f"{prefix}{name}.{k}": v for k, v in _arrays(half).items()})
    for i, other in enumerate(detector.others):
        arrays.update(_all_arrays(other, f"{prefix}sources.{i}."))
    return arrays


def _arrays(detector: OODDetector) -> dict[str, np.ndarray]:
    arrays = {"center": detector.center, "scale": detector.scale, "bank": detector.bank, "location": detector.location}
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def _framing_half(
    card: Any, arrays: dict[str, np.ndarray], where: str, prefix: str = ""
) -> tuple[OODDetector, tuple[float, float]]:
    """The framing half saved in ood.json's "framing" and the "framing." arrays; a damaged one refused."""
    try:
        refs = (float(card["refs"][0]), float(card["refs"][1]))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _damaged(where, "framing", e) from None
    return _half(prefix, "framing", FRAMING_STATISTICS, card, arrays, where, min(refs) > 0), refs


def _pixels_half(card: Any, arrays: dict[str, np.ndarray], where: str, prefix: str = "") -> tuple[OODDetector, float]:
    """The pixel half saved in ood.json's "pixels" and the "pixels." arrays; a damaged one refused."""
    try:
        ref = float(card["ref"])
    except (KeyError, TypeError, ValueError) as e:
        raise _damaged(where, "pixels", e) from None
    return _half(prefix, "pixels", PIXEL_STATISTICS, card, arrays, where, ref > 0), ref


def _half(
    prefix: str,
    name: str,
    statistics: tuple[str, ...],
    card: Any,
    arrays: dict[str, np.ndarray],
    where: str,
    refs_ok: bool,
) -> OODDetector:
    n = len(statistics)
    try:
        half = {k: arrays[f"{prefix}{name}.{k}"].astype(np.float64) for k in ("center", "scale", "bank", "location")}
        ok = (
            refs_ok
            and list(card["statistics"]) == list(statistics)
            and half["center"].shape == (n,)
            and half["bank"].shape[0] == n
            and half["location"].shape == (half["bank"].shape[1] + 1,)
        )
        threshold = float(card["threshold"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _damaged(where, name, e) from None
    if not ok:
        raise ModelError(
            f"{where}: the {name} half of the detector does not match {statistics[:3]}...; refit it "
            "with covidct ood fit RUN"
        )
    return OODDetector(
        "mahalanobis", name, n, half["center"], half["scale"], half["bank"], half["location"], threshold, 95.0
    )


def _damaged(where: str, name: str, e: Exception) -> ModelError:
    return ModelError(
        f"{where}: the {name} half of the detector is damaged ({type(e).__name__}: {e}); refit it with "
        "covidct ood fit RUN"
    )


_CARD_KEYS = {
    "format",
    "method",
    "k",
    "architecture",
    "feature_dim",
    "threshold",
    "percentile",
    "acquisitions",
    "framing",
    "pixels",
    "sources",
    "own_threshold",
    "shift",
}
