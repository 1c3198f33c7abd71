"""Figures of an evaluation (the study's confusion matrix, ROC, misclassified scores; PR, reliability, curves)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen needed; must come before pyplot
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from covidct.evaluation.metrics import roc_points
from covidct.verdict import positive


def confusion_matrix_figure(tp: int, tn: int, fp: int, fn: int, class_names: Sequence[str]) -> Figure:
    """Rows: true class; columns: predicted class (label order, negative first)."""
    cm = np.array([[tn, fp], [fn, tp]])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            fontsize=14,
            color="white" if v > cm.max() / 2 else "black",
        )
    ax.set_xticks([0, 1], labels=list(class_names))
    ax.set_yticks([0, 1], labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    return fig


def roc_figure(
    labels: Sequence[int],
    scores: Sequence[float],
    auc: float,
    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    point: tuple[float, float] | None = None,
) -> Figure:
    """The ROC curve, with a shaded confidence band (fpr grid, tpr low, tpr high) and the model's operating point
    (1 - specificity, sensitivity at its threshold) when given."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    if len(set(labels)) == 2:
        fpr, tpr, _ = roc_points(labels, scores)
        if band is not None:
            ax.fill_between(band[0], band[1], band[2], alpha=0.25, label="95% band (bootstrap)")
        ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.3f}")
        if point is not None:
            ax.plot(*point, "o", color="black", ms=7, label="operating point (the model's threshold)")
    else:
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC curve")
    ax.legend(loc="lower right")
    return fig


def precision_recall_figure(labels: Sequence[int], scores: Sequence[float]) -> Figure:
    """Precision (PPV) against recall (sensitivity), with the prevalence as the chance line."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = plt.subplots(figsize=(4.2, 4))
    y = np.asarray(labels)
    if len(set(labels)) == 2:
        precision, recall, _ = precision_recall_curve(y, scores)
        ap = average_precision_score(y, scores)
        ax.step(recall, precision, where="post", lw=2, label=f"AP = {ap:.3f}")
    ax.axhline(y.mean(), color="grey", ls="--", lw=1, label=f"prevalence {y.mean():.2f}")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall curve")
    ax.legend(loc="lower left")
    return fig


def reliability_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], eces: dict[str, float]) -> Figure:
    """Observed positive rate against mean score per bin, one line per set of scores (e.g. before/after)."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    for name, (mean_score, observed) in curves.items():
        ax.plot(mean_score, observed, marker="o", ms=4, label=f"{name} (ECE {eces[name]:.3f})")
    ax.set_xlabel("mean score in bin")
    ax.set_ylabel("fraction COVID in bin")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    return fig


def training_curves_figure(rows: Sequence[dict[str, Any]]) -> Figure:
    """Loss and accuracy per epoch, train and validation."""
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, ax in (("loss", ax1), ("acc", ax2)):
        for split in ("train", "val"):
            values = [float(r.get(f"{split}_{key}", "nan") or "nan") for r in rows]
            ax.plot(epochs, values, marker="o", ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    if any("val_auc" in r for r in rows):
        ax2.plot(epochs, [float(r.get("val_auc") or "nan") for r in rows], marker="o", ms=3, label="val AUC")
        ax2.legend()
    fig.suptitle("Training curves")
    fig.tight_layout()
    return fig


def misclassified_histogram(scores: Sequence[float], labels: Sequence[int], threshold: float) -> Figure:
    """Scores of the misclassified images (the study's Fig. 7).

    Near the threshold: unsure; at the ends: confidently wrong."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    wrong = positive(s, threshold).astype(int) != y
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(0, 1, 21)
    ax.hist(s[wrong & (y == 0)], bins=bins, alpha=0.7, label=f"false positives ({int((wrong & (y == 0)).sum())})")
    ax.hist(s[wrong & (y == 1)], bins=bins, alpha=0.7, label=f"false negatives ({int((wrong & (y == 1)).sum())})")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("score (probability of COVID)")
    ax.set_ylabel("images")
    ax.set_title(f"Scores of misclassified images ({int(wrong.sum())} of {len(s)})")
    ax.legend()
    return fig
