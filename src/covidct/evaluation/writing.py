"""Writing: an evaluation's files (metrics.json, predictions.csv, figures) and its table on the screen."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from covidct.config import EVAL_DEFAULTS
from covidct.evaluation.calibration import (
    apply_temperature,
    reliability_curve,
)
from covidct.evaluation.figures import (
    confusion_matrix_figure,
    misclassified_histogram,
    precision_recall_figure,
    reliability_figure,
    roc_figure,
    training_curves_figure,
)
from covidct.evaluation.metrics import predict
from covidct.evaluation.patients import group_scores
from covidct.evaluation.scoring import Scored
from covidct.evaluation.statistics import (
    roc_band,
)
from covidct.evaluation.summary import exact
from covidct.fileio import write_csv, write_json
from covidct.fileio.plotting import save_figure
from covidct.fileio.tables import interval_text, number_text, table_text
from covidct.runs import RunDir
from covidct.runs.records import prediction_rows
from covidct.verdict import flag_cell, flag_of_cell, positive


def misclassified(eval_dir: Path) -> list[dict[str, Any]]:
    """The rows of an evaluation's predictions.csv whose prediction is wrong, each with "flagged": True when the
    out-of-distribution detector flagged it (its in_distribution cell read by verdict.flag_of_cell)."""
    rows = [r for r in prediction_rows(eval_dir / "predictions.csv") if r["label"] != r["prediction"]]
    return [{**r, "flagged": flag_of_cell(r.get("in_distribution")) is False} for r in rows]


def write_evaluation(
    s: Scored, result: dict[str, Any], out: Path, n_bootstrap: int = EVAL_DEFAULTS.n_bootstrap, seed: int = 0
) -> None:
    """predictions.csv, val_predictions.csv, the figures, and metrics.json last (its presence means complete)."""
    labels, scores, threshold = s.labels, s.scores, s.threshold
    preds = predict(scores, threshold)
    rows = [
        {"path": p, "source": x.source, "label": int(y), "score": exact(v), "prediction": int(q)}
        for p, x, y, v, q in zip(s.paths, s.samples, labels, scores, preds)
    ]
    if s.ood_scores is not None and s.ood_flags is not None:
        for row, o, f in zip(rows, s.ood_scores, s.ood_flags):
            row["ood_score"], row["in_distribution"] = round(float(o), 4), flag_cell(not f)
    write_csv(out / "predictions.csv", rows)
    if result.get("per_group"):
        groups = group_scores(s.samples, labels, scores, result["per_group"]["aggregation"], s.lung_fractions)
        columns = ("group", "source", "label", "slices", "slices_counted")
        write_csv(
            out / "group_predictions.csv",
            [
                {
                    **{k: r[k] for k in columns},
                    "score": exact(r["score"]),
                    "prediction": int(positive(r["score"], threshold)),
                }
                for r in groups
            ],
        )
    if s.split != "val" and s.val_scores is not None:  # the scores every threshold was chosen on, for the record
        val_rows = [
            {"path": p, "label": int(y), "score": exact(v)}
            for p, y, v in zip(s.val_paths or [], s.val_labels, s.val_scores)
        ]
        write_csv(out / "val_predictions.csv", val_rows)
    tp, tn, fp, fn = (result[k] for k in ("tp", "tn", "fp", "fn"))
    save_figure(confusion_matrix_figure(tp, tn, fp, fn, s.class_names), out / "confusion_matrix.png")
    band = roc_band(labels, scores, n_resamples=min(n_bootstrap, 1000), seed=seed) if n_bootstrap > 0 else None
    sens, spec = result.get("sensitivity"), result.get("specificity")  # NaN (or None) on a set of one class
    point = (1 - spec, sens) if all(v is not None and math.isfinite(v) for v in (sens, spec)) else None
    save_figure(roc_figure(labels.tolist(), scores.tolist(), result["auc"], band, point), out / "roc_curve.png")
    save_figure(precision_recall_figure(labels.tolist(), scores.tolist()), out / "pr_curve.png")
    calibration = result["calibration"]
    curves = {"model": reliability_curve(labels, scores)}
    eces = {"model": calibration["ece"]}
    if "temperature" in calibration:
        t = calibration["temperature"]
        curves[f"temperature {t:.2f}"] = reliability_curve(labels, apply_temperature(scores, t))
        eces[f"temperature {t:.2f}"] = calibration["ece_calibrated"]
    save_figure(reliability_figure(curves, eces), out / "reliability.png")
    save_figure(misclassified_histogram(scores, labels, threshold), out / "misclassified_scores.png")
    history = RunDir(s.runs[0]).history() if len(s.runs) == 1 else []
    if history:
        save_figure(training_curves_figure(history), out / "training_curves.png")
    write_json(out / "metrics.json", result)


def metrics_table(result: dict[str, Any]) -> str:
    """The study's 'Test Performance' table with 95% intervals, one row per operating point.

    Intervals shown: Wilson for proportions, DeLong for the AUC (metrics.json also has the bootstrap ones)."""
    points = result.get("operating_points") or [{"name": "default", **result}]
    rows = []
    for p in points:
        row: dict[str, Any] = {"operating point": p["name"], "threshold": f"{p['threshold']:.3f}"}
        for k in ("accuracy", "sensitivity", "specificity", "auc"):
            ci = p.get("ci95", {}).get(k, {})
            lo_hi = ci.get("delong" if k == "auc" else "wilson")
            row[k] = f"{number_text(p[k])} {interval_text(lo_hi)}".strip()
        row["TP/TN/FP/FN"] = f"{p['tp']}/{p['tn']}/{p['fp']}/{p['fn']}"
        rows.append(row)
    model = result["model"] if isinstance(result["model"], str) else "ensemble of " + ", ".join(result["model"])
    tta = " + TTA" if result.get("tta") else ""
    head = f"----- {result['split']} performance: {model}{tta} (epoch {result['epoch']}, n={result['n']}) -----"
    foot = "95% intervals: Wilson (proportions), DeLong (AUC); thresholds other than default chosen on val"
    return head + "\n" + table_text(rows) + "\n" + foot + ood_line(result.get("ood"))


def ood_line(ood: dict[str, Any] | None) -> str:
    """What the out-of-distribution check said of the evaluated images (a line under the table)."""
    if not ood:
        return "\nout-of-distribution check: unavailable (no detector; add one with covidct ood fit RUN)"
    line = f"\nout-of-distribution: {ood['n_flagged']} images flagged ({ood['fraction_flagged']:.1%})"
    for name in ("in_distribution", "flagged"):
        m = ood.get(name)
        if m:
            line += f"; {name.replace('_', '-')}: n={m['n']}, accuracy {number_text(m['accuracy'])}, "
            line += f"AUC {number_text(m['auc'])}"
    return line
