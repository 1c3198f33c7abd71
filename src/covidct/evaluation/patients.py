"""Patient-level figures from slice scores: each group of a set (a patient's folder, a CSV's group column, a
source's own grouping) scored as one, the way `covidct predict` scores a volume.

Why: hospital data come as patients, and a patient's label is what a clinician decides on. Slice-level metrics
over a folder of patients count a patient with 80 slices 80 times, and every slice of a COVID patient takes the
patient's label, normal-looking ones included. Here a group's score is the aggregation of its slices' scores
(covidct.verdict's AGGREGATIONS; default top10_mean: a few clearly abnormal slices make a patient positive)
over the slices that count by predict's rule (DICOM slices whose HU lung mask shows lung; all slices of a group
without HU or without any such slice), and its label is COVID when any of its slices is labelled COVID. Pure
functions: no model, no files (the lung fractions are read by the caller).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covidct.data import Sample
from covidct.errors import DataError
from covidct.evaluation.metrics import binary_metrics
from covidct.evaluation.statistics import delong_interval
from covidct.verdict import AGGREGATIONS, checked_aggregation, summarise_volume


def group_scores(
    samples: list[Sample],
    labels: np.ndarray,
    scores: np.ndarray,
    how: str,
    lung_fractions: list[float | None] | None = None,
) -> list[dict[str, Any]]:
    """One row per group, in name order: group, source, label (any slice COVID), slices, slices counted, how they
    were chosen, score (aggregated as covidct predict aggregates a volume). A sample without a group is a group of
    its own (named by its path). lung_fractions: each slice's (None: no HU), for predict's rule of slices in lung."""
    checked_aggregation(how)
    members: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(samples):
        members.setdefault((s.source, s.group or str(s.path)), []).append(i)
    rows = []
    for (source, group), idx in sorted(members.items()):
        entries = []
        for i in idx:
            entry: dict[str, Any] = {"index": i, "score": float(scores[i])}
            if lung_fractions is not None and lung_fractions[i] is not None:
                entry["lung_fraction"] = lung_fractions[i]
            entries.append(entry)
        volume = summarise_volume(entries, how)
        rows.append(
            {
                "group": group,
                "source": source,
                "label": int(np.max(labels[idx])),
                "slices": len(idx),
                "slices_counted": volume["slices_counted"],
                "counted": volume["counted"],
                "mixed_labels": bool(len(set(labels[idx].tolist())) > 1),
                "score": volume["score"],
            }
        )
    return rows


def group_metrics(
    samples: list[Sample],
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    how: str,
    lung_fractions: list[float | None] | None = None,
) -> dict[str, Any]:
    """The metrics of the groups' scores at the model's threshold, the AUC with its DeLong interval, and what
    the groups were (how many, slices per group, which slices counted, groups whose slices carry both labels)."""
    grouped = sum(1 for s in samples if s.group)
    if grouped == 0:
        raise DataError(
            "no groups in this set: per-patient figures need a patient's slices in a subfolder of its class folder, "
            "a group column in the CSV, or a source that groups its images"
        )
    rows = group_scores(samples, labels, scores, how, lung_fractions)
    y = np.array([r["label"] for r in rows])
    s = np.array([r["score"] for r in rows])
    m = binary_metrics(y, s, threshold).to_dict()
    sizes = np.array([r["slices"] for r in rows])
    out = {
        "aggregation": how,
        "rule": f"a group's score: {AGGREGATIONS[how][1]}, over its slices in lung where HU shows it (as covidct "
        "predict scores a volume); its label: COVID if any of its slices is",
        "groups": len(rows),
        "ungrouped_images": len(samples) - grouped,
        "slices_per_group": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
        "groups_with_both_labels": sum(r["mixed_labels"] for r in rows),
        "groups_by_counting_rule": {
            rule: sum(r["counted"] == rule for r in rows) for rule in {r["counted"] for r in rows}
        },
        **{k: m[k] for k in ("n", "accuracy", "sensitivity", "specificity", "auc", "tp", "tn", "fp", "fn")},
    }
    if len(np.unique(y)) == 2:
        out["auc_delong"] = delong_interval(y, s)[2].as_list()
    return out
