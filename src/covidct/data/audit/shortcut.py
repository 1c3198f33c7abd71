"""The shortcut classifier: how well a plain classifier (scikit-learn, no deep net) tells the classes apart, and the
sources, from what is not the lungs: image metadata (width, height, aspect, file format, colour mode, bytes per
pixel) and the grey-level histogram. A cross-validated AUC near 1 says a benchmark can be solved without looking at
the anatomy; near 0.5, that these features carry no label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HIST_BINS = 32
FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
MODES = ("L", "RGB", "RGBA", "P", "I;16", "LA")


@dataclass
class ShortcutFeatures:
    width: int
    height: int
    format: str
    mode: str
    file_bytes: int
    histogram: np.ndarray  # HIST_BINS shares of grey levels

    def vector(self) -> np.ndarray:
        meta = [
            self.width,
            self.height,
            self.width / max(1, self.height),
            self.file_bytes / max(1, self.width * self.height),
        ]
        onehot = [float(self.format == f) for f in FORMATS] + [float(self.mode == m) for m in MODES]
        return np.concatenate([np.asarray(meta + onehot, dtype=np.float64), self.histogram])


DARK = 60  # of 255: air and aerated lung in a lung window
VIEW_STATISTICS = ("width", "height", "file_kb", "mean_grey", "grey_std", "dark_share")


def view_statistics(path: str | Path, view: Callable[[Image.Image], Image.Image] | None = None) -> dict[str, float]:
    """Simple statistics of one image: of its file (width, height, kB) and of what the model sees before resizing
    (`view`: its crop, grey and equalisation steps; covidct.data.transforms.view_transform): mean and standard
    deviation of the grey level and the share of dark pixels. Raises DataError for an unreadable file."""
    from covidct.data.images import load_rgb

    path = Path(path)
    img = load_rgb(path)
    width, height = img.size
    seen = np.asarray((view(img) if view else img).convert("L"), dtype=np.float32)
    return {
        "width": float(width),
        "height": float(height),
        "file_kb": path.stat().st_size / 1024,
        "mean_grey": float(seen.mean()),
        "grey_std": float(seen.std()),
        "dark_share": float((seen < DARK).mean()),
    }


def view_statistics_table(
    paths: list[str], view: Callable[[Image.Image], Image.Image] | None = None
) -> dict[str, np.ndarray]:
    """view_statistics of every path, as one array per statistic (in VIEW_STATISTICS order)."""
    rows = [view_statistics(p, view) for p in paths]
    return {name: np.array([r[name] for r in rows], dtype=float) for name in VIEW_STATISTICS}


def grey_histogram(grey: np.ndarray) -> np.ndarray:
    h = np.bincount((np.asarray(grey, dtype=np.uint8) // (256 // HIST_BINS)).ravel(), minlength=HIST_BINS)
    return h / max(1, h.sum())


def _shortcut_model(seed: int) -> Any:
    """The shortcut classifier: gradient-boosted trees (scikit-learn), the same within a source and across sources."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=100, random_state=seed)


def shortcut_auc(x: np.ndarray, y: np.ndarray, seed: int = 0, folds: int = 5) -> float | None:
    """Cross-validated ROC-AUC (macro one-vs-rest for more than two values) of gradient-boosted trees on x -> y;
    None when a value has fewer images than folds."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    values, counts = np.unique(y, return_counts=True)
    if len(values) < 2 or counts.min() < folds:
        return None
    model = _shortcut_model(seed)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    p = cross_val_predict(model, x, y, cv=cv, method="predict_proba")
    if len(values) == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro"))


META_COLUMNS = 4 + len(FORMATS) + len(MODES)  # the features that are not the grey histogram


def shortcut_aucs(features: list[np.ndarray], labels: list[int], sources: list[str], seed: int = 0) -> dict:
    """{'class within <source>': AUC, 'class within <source>, metadata only': AUC, 'class (all sources pooled)':
    AUC, 'source': AUC, 'class, trained on <a>, scored on <b>': AUC}. The grey histogram can carry real signal
    (ground glass raises lung density) as well as acquisition differences; the metadata-only classifier (size, aspect,
    format, mode, bytes per pixel) carries none."""
    x, y, s = np.stack(features), np.asarray(labels), np.asarray(sources)
    out: dict[str, float | None] = {}
    for source in sorted(set(sources)):
        mask = s == source
        out[f"class within {source or 'the data'}"] = shortcut_auc(x[mask], y[mask], seed)
        out[f"class within {source or 'the data'}, metadata only"] = shortcut_auc(
            x[mask][:, :META_COLUMNS], y[mask], seed
        )
    if len(set(sources)) > 1:
        out["class (all sources pooled)"] = shortcut_auc(x, y, seed)
        out["source"] = shortcut_auc(x, s, seed)
        for a in sorted(set(sources)):
            for b in sorted(set(sources) - {a}):
                out[f"class, trained on {a}, scored on {b}"] = transfer_auc(
                    x[s == a], y[s == a], x[s == b], y[s == b], seed
                )
    return out


def transfer_auc(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int = 0
) -> float | None:
    """AUC on one source of the shortcut classifier fitted on another: does what tells the classes apart in one
    source carry over? Near 0.5, the classifier's cues are the source's own; well below 0.5, they point the other
    way elsewhere (the failure a deep net trained on one source can inherit). None when either side holds one
    class."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
        return None
    model = _shortcut_model(seed).fit(x_train, y_train)
    return float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))
