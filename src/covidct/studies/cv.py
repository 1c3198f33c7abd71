"""`covidct cv`: k-fold cross-validation on train + val, to choose recipes with less noise than one validation
split of 118 images gives, and to build a fold ensemble.

Each fold is an ordinary run folder whose config points at a `splits.csv` (train = the other folds, val = this
fold, test = the official test split, untouched), so `covidct evaluate`, `report` and ensembles work on it
unchanged. Near-duplicate images (adjacent slices of one scan, found as in `covidct data audit`) are kept in the
same fold, so a fold's validation does not score copies of its training images.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from covidct.config import TrainConfig
from covidct.data import Sample, SplitData, load_splits
from covidct.data.datasets import is_official_layout
from covidct.data.sources import checked_labels
from covidct.errors import ConfigError, DataError
from covidct.evaluation.compare import read_predictions
from covidct.evaluation.evaluate import evaluate_run
from covidct.evaluation.metrics import binary_metrics
from covidct.evaluation.rules import choose_by_rule
from covidct.evaluation.thresholds import record_operating_point
from covidct.fileio import write_csv, write_json
from covidct.runs import RunDir
from covidct.runs.operating_point import OperatingPoint
from covidct.runs.records import CV_SUMMARY, EVERY_LABELLED, STUDENT, CrossValidation
from covidct.training.engine import run_name
from covidct.training.fit import train

log = logging.getLogger("covidct")


def near_duplicate_groups(samples: list[Sample]) -> np.ndarray:
    """A group id per sample: connected components of the audit's near-duplicate pairs."""
    from covidct.data.audit.report import image_record, near_duplicate_pairs

    records = [image_record("pool", s.label, s.path) for s in samples]
    pairs = near_duplicate_pairs(records)
    n = len(samples)
    if not pairs:
        return np.arange(n)
    i, j = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    graph = coo_matrix((np.ones(len(pairs)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def with_sample_groups(ids: np.ndarray, samples: list[Sample]) -> np.ndarray:
    """Group ids that also keep each sample's own group together (a patient, a paper, a subfolder: Sample.group),
    joined with the given ones (e.g. near-duplicate clusters): connected components of both."""
    n = len(samples)
    rows, cols = list(range(n)), list(range(n))
    first: dict[tuple[str, Any], int] = {}
    for k, (i, s) in enumerate(zip(ids, samples)):
        for key in [("id", int(i))] + ([("group", s.group)] if s.group else []):
            rows.append(first.setdefault(key, k))
            cols.append(k)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def cv_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Indices held out by each fold: stratified by label, groups never split; every index in exactly one fold."""
    if folds < 2:
        raise ConfigError(f"folds must be >= 2, got {folds!r}")
    if folds > int(np.bincount(labels).min()):
        raise ConfigError(f"folds ({folds}) must not exceed the images of the smallest class ({np.bincount(labels)})")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(labels)), labels, groups)]


def fold_rows(
    pool: list[Sample], held: np.ndarray, test: list[Sample], class_names: tuple[str, ...]
) -> list[dict[str, str]]:
    """splits.csv of one fold: absolute paths, class names, and train / val / test."""
    held_set = set(held.tolist())
    rows = [
        {"path": str(s.path.resolve()), "label": class_names[s.label], "split": "val" if i in held_set else "train"}
        for i, s in enumerate(pool)
    ]
    return rows + [{"path": str(s.path.resolve()), "label": class_names[s.label], "split": "test"} for s in test]


def summarise_folds(folds: list[dict[str, Any]], oof_labels: np.ndarray, oof_scores: np.ndarray) -> dict[str, Any]:
    """Mean and sd over folds of the best checkpoint's validation metrics, and the pooled out-of-fold ones."""
    out: dict[str, Any] = {"folds": folds}
    for key in ("val_acc", "val_auc"):
        values = np.array([f[key] for f in folds], dtype=float)
        out[key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    pooled = binary_metrics(oof_labels, oof_scores, 0.5)
    out["out_of_fold"] = {"n": len(oof_labels), "accuracy": pooled.accuracy, "auc": pooled.auc}
    if len(set(oof_labels.tolist())) == 2:  # the operating point of a model trained on the whole pool (EVERY_LABELLED)
        out["out_of_fold"]["youden_threshold"] = choose_by_rule("youden", oof_labels, oof_scores)
    return out


def run_cv(config: TrainConfig, folds: int = 5, progress: bool = True, group_duplicates: bool = True) -> Path:
    """Train one run per fold under OUT/cv-<stamp>-<model>/fold-<k>/; write cv.json and oof_predictions.csv, and the
    pool as one training split (EVERY_LABELLED: for a run of a fixed schedule on every labelled image, `--monitor
    last`, whose operating point is then the out-of-fold one in cv.json)."""
    data: SplitData = load_splits(config.data_dir, config.data_csv, config.seed)
    if not is_official_layout(Path(config.data_dir)) or config.data_csv:
        data = checked_labels(data, str(config.data_csv or config.data_dir))
    pool = data.splits["train"] + data.splits["val"]
    labels = np.array([s.label for s in pool])
    groups = with_sample_groups(near_duplicate_groups(pool) if group_duplicates else np.arange(len(pool)), pool)
    held_out = cv_folds(labels, groups, folds, config.seed)
    cv_dir = Path(config.out) / f"cv-{run_name(config.model)}"
    cv_dir.mkdir(parents=True, exist_ok=False)
    write_json(
        cv_dir / "cv_plan.json",
        {
            "folds": folds,
            "seed": config.seed,
            "group_near_duplicates": group_duplicates,
            "pool": len(pool),
            "groups": len(np.unique(groups)),
            "sample_groups": len({s.group for s in pool if s.group}),
        },
    )
    results, oof = [], {}
    for k, held in enumerate(held_out, start=1):
        fold_dir = cv_dir / f"fold-{k}"
        fold_dir.mkdir()
        csv_path = fold_dir / "splits.csv"
        write_csv(csv_path, fold_rows(pool, held, data.splits["test"], data.class_names))
        # a fold is scored, never served: no ONNX graph of it (the studies need its scores alone)
        fold_config = dataclasses.replace(config, data_csv=str(csv_path.resolve()), out=str(fold_dir), onnx=False)
        log.info("cv fold %d/%d: %d train, %d val", k, folds, len(pool) - len(held), len(held))
        run = train(fold_config, progress=progress, run_dir=fold_dir / "run")
        r = evaluate_run(run, "val", n_bootstrap=0)
        results.append({"fold": k, "run": str(run), "n_val": len(held), "val_acc": r["accuracy"], "val_auc": r["auc"]})
        oof.update(read_predictions(RunDir(run).eval_dir("val") / "predictions.csv"))
    paths = sorted(oof)
    oof_labels = np.array([oof[p][0] for p in paths])
    oof_scores = np.array([oof[p][1] for p in paths])
    write_csv(cv_dir / "oof_predictions.csv", [{"path": p, "label": oof[p][0], "score": oof[p][1]} for p in paths])
    write_csv(cv_dir / EVERY_LABELLED, fold_rows(pool, np.array([], dtype=int), data.splits["test"], data.class_names))
    write_json(cv_dir / CV_SUMMARY, summarise_folds(results, oof_labels, oof_scores))
    return cv_dir


def train_student(cv: CrossValidation, config: TrainConfig, progress: bool = True) -> Path:
    """One network on every labelled image of the pool (cv.every_labelled), distilled from the fold runs (their
    mean answer on the same augmented batch: `teachers`), for `config`'s fixed schedule whose last epoch is the model
    (no image is left to choose one); its operating point Youden's J on the folds' out-of-fold scores, which no
    image it trained on chose. No ImageNet probe: one network per image. Written to CV/student (STUDENT)."""
    threshold = cv.summary.get("out_of_fold", {}).get("youden_threshold")
    if threshold is None:
        raise DataError(f"{cv.folder}: the out-of-fold scores hold one class: no operating point for a student")
    student = dataclasses.replace(
        config,
        data_csv=str(cv.every_labelled.resolve()),
        teachers=[str(run) for run in cv.runs],
        imagenet_probe=0.0,
        monitor="last",
        out=str(cv.folder),
    )
    log.info(
        "student: one network on the %d labelled images, distilled from %d folds",
        cv.summary["out_of_fold"]["n"],
        len(cv.runs),
    )
    run = RunDir(train(student, progress=progress, run_dir=cv.folder / STUDENT))
    point = OperatingPoint(
        threshold=float(threshold),
        rule="youden",
        chosen_on="out of fold",
        checkpoint=run.checkpoint("best").name,
        set=f"the {cv.summary['out_of_fold']['n']} out-of-fold scores of the {len(cv.runs)} fold runs ({CV_SUMMARY})",
    )
    record_operating_point(run, point)
    return run.path
