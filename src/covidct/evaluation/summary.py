"""Summarising: metrics.json's content from scores alone (pure: no model, no files): metrics at the threshold with
intervals, operating points chosen on validation, calibration, per-source and per-group figures, the
out-of-distribution split."""

from __future__ import annotations

from typing import Any

import numpy as np

from covidct.config import EVAL_DEFAULTS
from covidct.data import Sample
from covidct.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)
from covidct.evaluation.metrics import binary_metrics
from covidct.evaluation.patients import group_metrics
from covidct.evaluation.rules import choose_by_rule
from covidct.evaluation.score_drivers import score_drivers
from covidct.evaluation.scoring import Scored
from covidct.evaluation.statistics import (
    bootstrap_intervals,
    delong_interval,
    wilson_interval,
)


def summarise_scores(
    s: Scored,
    n_bootstrap: int = EVAL_DEFAULTS.n_bootstrap,
    min_sensitivity: float = EVAL_DEFAULTS.min_sensitivity,
    seed: int = 0,
    calibrate: bool = False,
    per_group: str | None = None,
) -> dict[str, Any]:
    """metrics.json's content from scores alone (pure: no model, no files): the metrics at the model's threshold
    with their intervals, the operating points chosen on validation scores, calibration, per-source metrics and,
    with per_group (an aggregation), each group (patient) scored as one (evaluation/patients.py)."""
    labels, scores, threshold = s.labels, s.scores, s.threshold
    metrics = binary_metrics(labels, scores, threshold)
    points = []
    chosen = (
        operating_points(s.val_labels, s.val_scores, threshold, min_sensitivity) if s.val_scores is not None else []
    )
    ci95 = intervals(labels, scores, threshold, n_bootstrap, seed)
    for name, t in chosen or [("default", threshold)]:
        m = binary_metrics(labels, scores, t).to_dict()
        ci = ci95 if t == threshold else intervals(labels, scores, t, n_bootstrap, seed)  # the default point's: once
        points.append({"name": name, "chosen_on": "val", **m, "ci95": ci})
    single = len(s.runs) == 1
    return {
        "run": str(s.runs[0]) if single else [str(r) for r in s.runs],
        "model": s.architectures[0] if single else s.architectures,
        "ensemble": {"members": len(s.runs), "aggregation": "mean of probabilities"} if not single else None,
        "tta": "mean over the image and its left-right mirror" if s.tta else None,
        "split": s.split,
        "external": s.external,
        "shift": s.shift,
        "checkpoint": s.checkpoint,
        "epoch": s.epochs[0] if single else s.epochs,
        "class_names": s.class_names,
        "positive_class": s.class_names[1],
        **metrics.to_dict(),
        "ci95": ci95,
        "bootstrap": {"resamples": n_bootstrap, "seed": seed, "stratified": True, "method": "percentile"},
        "operating_points": points,
        "calibration": calibration_report(
            labels, scores, s.val_labels, s.val_scores, calibrate and s.val_scores is not None
        ),
        "validation": "shared by all members" if s.val_scores is not None else "none shared: thresholds not chosen",
        "per_source": per_source_metrics(s.samples, labels, scores, threshold),
        "score_drivers": score_drivers(labels, scores, s.view_stats) if s.view_stats is not None else None,
        "per_group": group_metrics(s.samples, labels, scores, threshold, per_group, s.lung_fractions)
        if per_group
        else None,
        "ood": ood_split_metrics(labels, scores, threshold, s.ood_flags),
    }


def ood_split_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, flags: np.ndarray | None
) -> dict[str, Any] | None:
    """The share of images the out-of-distribution detector flagged, and the metrics on the images it let through
    and on those it flagged, separately (None without a detector). Pure."""
    if flags is None:
        return None
    flags = np.asarray(flags, dtype=bool)
    labels, scores = np.asarray(labels), np.asarray(scores)

    def part(mask: np.ndarray) -> dict[str, Any] | None:
        return binary_metrics(labels[mask], scores[mask], threshold).to_dict() if mask.any() else None

    return {
        "n_flagged": int(flags.sum()),
        "fraction_flagged": float(flags.mean()) if len(flags) else 0.0,
        "in_distribution": part(~flags),
        "flagged": part(flags),
    }


def exact(score: Any) -> float:
    """A score as written to a predictions file: every digit kept (repr round-trips), so a count recomputed from the
    file at a threshold that sits on a score is the count in metrics.json. Six decimals moved scores across it."""
    return float(score)


def per_source_metrics(samples: list[Sample], labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Accuracy, sensitivity, specificity and AUC (DeLong interval) of each source among the scored images."""
    sources = np.array([s.source for s in samples])
    out = {}
    for source in sorted(set(sources)):
        mask = sources == source
        m = binary_metrics(labels[mask], scores[mask], threshold).to_dict()
        entry = {k: m[k] for k in ("n", "accuracy", "sensitivity", "specificity", "auc", "tp", "tn", "fp", "fn")}
        if len(np.unique(labels[mask])) == 2:
            entry["auc_delong"] = delong_interval(labels[mask], scores[mask])[2].as_list()
        out[source or "(unnamed)"] = entry
    return out


def calibration_report(
    labels: np.ndarray,
    scores: np.ndarray,
    val_labels: np.ndarray | None,
    val_scores: np.ndarray | None,
    calibrate: bool,
) -> dict[str, Any]:
    """ECE (10 equal-width bins) of the scores; with calibrate, the temperature fitted on validation and the
    ECE after applying it. Temperature changes no ranking and no decision at 0.5."""
    report: dict[str, Any] = {"ece": expected_calibration_error(labels, scores), "bins": 10}
    if calibrate:
        t = fit_temperature(val_labels, val_scores)
        report.update(
            temperature=t,
            fitted_on="val",
            ece_calibrated=expected_calibration_error(labels, apply_temperature(scores, t)),
        )
    return report


def operating_points(
    val_labels: np.ndarray, val_scores: np.ndarray, default: float, min_sensitivity: float
) -> list[tuple[str, float]]:
    """(name, threshold) pairs: the model's own, and those chosen on validation scores."""
    points = [("default", float(default))]
    if len(np.unique(val_labels)) == 2:
        points.append(("youden", choose_by_rule("youden", val_labels, val_scores)))
        points.append(
            (
                f"sensitivity>={min_sensitivity:g}",
                choose_by_rule("sensitivity", val_labels, val_scores, min_sensitivity),
            )
        )
    return points


def intervals(labels: np.ndarray, scores: np.ndarray, threshold: float, n_bootstrap: int, seed: int) -> dict:
    """95% intervals: Wilson for the proportions, stratified bootstrap for everything, DeLong for the AUC."""
    m = binary_metrics(labels, scores, threshold)
    boot = bootstrap_intervals(labels, scores, threshold, n_bootstrap, seed=seed) if n_bootstrap > 0 else {}
    wilson = {
        "accuracy": wilson_interval(m.tp + m.tn, m.n),
        "sensitivity": wilson_interval(m.tp, m.tp + m.fn),
        "specificity": wilson_interval(m.tn, m.tn + m.fp),
        "precision": wilson_interval(m.tp, m.tp + m.fp),
        "npv": wilson_interval(m.tn, m.tn + m.fn),
    }
    out: dict[str, dict[str, list[float]]] = {}
    for name in ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "auc"):
        entry = {}
        if name in wilson:
            entry["wilson"] = wilson[name].as_list()
        if name in boot:
            entry["bootstrap"] = boot[name].as_list()
        out[name] = entry
    out["auc"]["delong"] = delong_interval(labels, scores)[2].as_list()
    return out
