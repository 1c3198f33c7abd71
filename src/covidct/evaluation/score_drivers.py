"""What a model's scores follow on a set of images: the rank correlation of the scores with simple statistics of
each image (size, file size, grey level and dark share of what the model sees), beside how well each statistic
alone separates the classes. Pure: numbers in, numbers out.

Why: a model that is right for the wrong reason on its own source shows it on another one. On the held-out source,
scores that follow image height or brightness more than the class does say the model reads the framing or the
exposure (DeGrave et al. 2021), and a statistic that follows the scores but separates the classes the other way
round says why the model fails there.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def score_drivers(labels: np.ndarray, scores: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, Any]:
    """{"statistics": {name: {"spearman": rho of score vs statistic, "class_auc": AUC of the statistic alone}},
    "strongest": the name with the largest |rho|}. A constant statistic (or constant scores) gets rho None;
    class_auc is None with one class."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    two_classes = len(np.unique(labels)) == 2
    out: dict[str, dict[str, float | None]] = {}
    for name, values in stats.items():
        values = np.asarray(values, dtype=float)
        if len(values) != len(scores):
            raise ValueError(f"statistic {name!r} has {len(values)} values for {len(scores)} scores")
        constant = np.ptp(values) == 0 or np.ptp(scores) == 0
        rho = None if constant else float(spearmanr(scores, values)[0])
        auc = float(roc_auc_score(labels, values)) if two_classes and np.ptp(values) > 0 else None
        out[name] = {"spearman": rho, "class_auc": auc}
    ranked = [n for n in out if out[n]["spearman"] is not None]
    strongest = max(ranked, key=lambda n: abs(out[n]["spearman"]), default=None)  # type: ignore[arg-type]
    return {"statistics": out, "strongest": strongest}


FILE_STATISTICS = ("width", "height", "file_kb")  # of the file, not of what it shows
WARN_RHO = 0.5  # |Spearman| from which scores following a file statistic get a warning


def driver_warnings(drivers: dict[str, Any], warn_rho: float = WARN_RHO) -> list[str]:
    """A warning for each file statistic (size, kB) the scores follow with |rho| >= warn_rho: a model that ranks
    images by their framing or encoding, not by what they show."""
    out = []
    for name in FILE_STATISTICS:
        d = drivers.get("statistics", {}).get(name)
        if d and d["spearman"] is not None and abs(d["spearman"]) >= warn_rho:
            rho = d["spearman"]
            out.append(
                f"the scores follow the image's {name} (Spearman {rho:+.2f}): the model may be reading the "
                "framing or the encoding, not the lungs"
            )
    return out


def drivers_text(drivers: dict[str, Any]) -> str:
    """One line: the statistic the scores follow most, and what it says of the class on its own."""
    name = drivers.get("strongest")
    if name is None:
        return "the scores follow none of the image statistics (constant scores or statistics)"
    d = drivers["statistics"][name]
    auc = f"{d['class_auc']:.2f}" if d["class_auc"] is not None else "n/a (one class)"
    return f"scores follow {name} most (Spearman {d['spearman']:+.2f}; {name} alone: class AUC {auc})"
