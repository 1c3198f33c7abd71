"""Evaluate a run's checkpoint on a split: metrics.json, predictions.csv and the study's figures."""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from covidct.data import ImageDataset, Sample
from covidct.data.lungmask import slice_lung_fraction
from covidct.data.probe import statistics_of
from covidct.data.sources import external_set
from covidct.data.transforms import view_transform
from covidct.errors import ConfigError, DataError, ModelError
from covidct.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)
from covidct.evaluation.drivers import score_drivers
from covidct.evaluation.figures import (
    confusion_matrix_figure,
    misclassified_histogram,
    precision_recall_figure,
    reliability_figure,
    roc_figure,
    training_curves_figure,
)
from covidct.evaluation.metrics import binary_metrics, predict, threshold_for_sensitivity, youden_threshold
from covidct.evaluation.patients import group_metrics, group_scores
from covidct.evaluation.statistics import (
    bootstrap_intervals,
    delong_interval,
    delong_paired_test,
    roc_band,
    wilson_interval,
)
from covidct.fileio import atomic_write, write_csv, write_json
from covidct.inference.load import LoadedModel, load_checkpoint, read_checkpoint, with_detector
from covidct.plotting import save_figure
from covidct.runs import RunDir, find_checkpoint
from covidct.tables import interval_text, number_text, table_text


def load_classifier(checkpoint: str | Path) -> LoadedModel:
    """The model of a checkpoint (read safely: weights_only), ready to score."""
    ckpt = Path(checkpoint)
    run = RunDir(ckpt.parent.parent) if ckpt.parent.name == "checkpoints" else None
    return load_checkpoint(ckpt, run)


@torch.no_grad()
def predict_scores(
    module: LoadedModel, dataset: ImageDataset, batch_size: int = 32, num_workers: int = 0, tta: bool = False
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels, scores) where score = probability of class 1 (COVID), in fp32.

    tta: test-time augmentation, the mean of the probabilities of the image and of its left-right mirror (the
    flip the training augmentation already uses)."""
    paths, labels, scores, _ = predict_scores_and_ood(module, dataset, batch_size, num_workers, tta, check=False)
    return paths, labels, scores


@torch.no_grad()
def predict_scores_and_ood(
    module: LoadedModel,
    dataset: ImageDataset,
    batch_size: int = 32,
    num_workers: int = 0,
    tta: bool = False,
    check: bool = True,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
    """predict_scores and, when the model has a detector (and check), each image's out-of-distribution score from
    the same forward pass (of the image as it is, not its mirror)."""
    check = check and module.ood is not None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    paths: list[str] = []
    labels, scores, ood = [], [], []
    for batch in loader:
        x = batch["image"]
        p, batch_ood = module.score_batch(x, check)
        ood.append(batch_ood)
        if tta:
            p = (p + module.logits(x.flip(-1)).float().softmax(1)[:, 1]) / 2
        scores.append(p.cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        paths += list(batch["path"])
    return paths, np.concatenate(labels), np.concatenate(scores), np.concatenate(ood) if check else None


def ensemble_mean(scores: list[np.ndarray]) -> np.ndarray:
    """An ensemble's score: the arithmetic mean of its members' probabilities (equal weights, nothing fitted)."""
    if not scores:
        raise ValueError("an ensemble needs at least one member")
    shapes = {s.shape for s in scores}
    if len(shapes) != 1:
        raise ValueError(f"members scored different numbers of images: {sorted(shapes)}")
    return np.mean(np.stack(scores), axis=0)


def eval_dataset(module: LoadedModel, samples: list[Sample]) -> ImageDataset:
    """Samples as the model expects them at evaluation: its own preprocessing, no augmentation."""
    return ImageDataset(samples, module.transform)


def file_digests(paths: list[Path]) -> set[str]:
    return {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def training_overlap(run: RunDir, samples: list[Sample]) -> int:
    """How many of `samples` have the same bytes as an image the run trained or validated on."""
    data = run.data()
    seen = file_digests([s.path for sp in ("train", "val") for s in data.splits[sp]])
    return sum(h in seen for h in (hashlib.sha256(Path(s.path).read_bytes()).hexdigest() for s in samples))


def external_samples(run: RunDir, on: str) -> tuple[str, list[Sample], int]:
    """(name, samples, overlap) of the labelled set `on` (every image of it), with a warning when `overlap` of its
    images have the bytes of images the run trained or validated on: figures on those are not external."""
    name, samples = external_set(on)
    overlap = training_overlap(run, samples)
    if overlap:
        warnings.warn(
            f"{overlap} of {len(samples)} images of {on} have the same content as images the run trained or "
            "validated on: this is not an external validation for them",
            stacklevel=4,  # past this helper and its caller: where the evaluation was asked for
        )
    return name, samples, overlap


@dataclass
class Scored:
    """What scoring a run (or an ensemble) on a set of images gives: all that summarising and writing need."""

    runs: list[Path]
    split: str
    paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    samples: list[Sample]
    val_paths: list[str] | None
    val_labels: np.ndarray | None
    val_scores: np.ndarray | None
    threshold: float
    class_names: list[str]
    architectures: list[str]
    epochs: list[int]
    checkpoint: str
    tta: bool = False
    external: dict[str, Any] | None = None
    view_stats: dict[str, np.ndarray] | None = None  # image statistics of an external set (evaluation/drivers.py)
    lung_fractions: list[float | None] | None = None  # per slice, from HU (DICOM only), for per-group scoring
    ood_scores: np.ndarray | None = None  # out-of-distribution score per image (single runs with a detector)
    ood_flags: np.ndarray | None = None  # True: unlike the training images


def score_runs(
    runs: list[Path],
    split: str,
    checkpoint: str = "best",
    data_dir: str | Path | None = None,
    threshold: float | None = None,
    tta: bool = False,
    on: str | None = None,
) -> Scored:
    """Score `split` (or the external set `on`) and the validation split with each run; an ensemble's score is the
    mean of its members' probabilities. The only stage of an evaluation that runs a model."""
    external: list[Sample] | None = None
    overlap = 0
    if on is not None:
        split, external, overlap = external_samples(RunDir.at(runs[0]), on)
    members = [score_member(run, split, checkpoint, data_dir, tta, external, single=len(runs) == 1) for run in runs]
    first = members[0]
    paths, labels, _ = first["scored"]
    for m in members[1:]:
        if m["scored"][0] != paths:
            raise DataError(f"runs {first['run']} and {m['run']} score different images of split {split!r}")
    scores = ensemble_mean([m["scored"][2] for m in members])
    val_paths, val_labels, val_scores = (paths, labels, scores) if split == "val" else shared_validation(members)
    module = first["module"]
    # on an external set: simple statistics of every image, for what the scores follow there (first member's view)
    view_stats = statistics_of(paths, view_transform(module.preprocessing)) if on is not None else None
    return Scored(
        runs=runs, split=split, paths=paths, labels=labels, scores=scores, samples=first["samples"],
        val_paths=val_paths, val_labels=val_labels, val_scores=val_scores,
        threshold=float(module.threshold if threshold is None else threshold), class_names=module.class_names,
        architectures=[m["module"].architecture for m in members],
        epochs=[int(m["module"].card["checkpoint"]["epoch"]) for m in members], checkpoint=first["ckpt"].name,
        tta=tta, external={"set": on, "images_seen_in_training": overlap} if on is not None else None,
        view_stats=view_stats, ood_scores=first["ood"], ood_flags=module.ood_flags(first["ood"]),
    )  # fmt: skip


def score_member(run: Path, split: str, checkpoint: str, data_dir: str | Path | None, tta: bool,
                 external: list[Sample] | None, single: bool) -> dict[str, Any]:  # fmt: skip
    """One run's scores of the split (or external set) and of its validation split, with its detector's scores
    when it is evaluated alone (an ensemble has no one detector)."""
    ckpt = find_checkpoint(run, checkpoint)
    data = RunDir.at(run).data(data_dir)
    if external is None and split not in data.splits:
        raise DataError(f"split must be one of {list(data.splits)}, got {split!r}")
    module = load_classifier(ckpt)
    if single and ckpt.parent.name == "checkpoints":
        module = with_detector(module, RunDir(ckpt.parent.parent).ood_dir)
    if torch.cuda.is_available():  # thousands of images of an external set: seconds instead of minutes
        module.to("cuda")
    samples = external if external is not None else data.splits[split]
    paths, labels, scores, ood = predict_scores_and_ood(module, eval_dataset(module, samples), tta=tta)
    val = predict_scores(module, eval_dataset(module, data.splits["val"]), tta=tta) if split != "val" else None
    return {"run": run, "ckpt": ckpt, "module": module, "scored": (paths, labels, scores), "val": val,
            "samples": samples, "ood": ood}  # fmt: skip


def shared_validation(members: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
    """(paths, labels, ensemble scores) of the validation split every member holds, or Nones: e.g. the runs of
    cross-validation folds, where no validation set is unseen by every member."""
    first = members[0]["val"]
    if first is None or not all(m["val"][0] == first[0] for m in members):
        return None, None, None
    return first[0], first[1], ensemble_mean([m["val"][2] for m in members])


def summarise(
    s: Scored,
    n_bootstrap: int = 2000,
    min_sensitivity: float = 0.95,
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

    return {"n_flagged": int(flags.sum()), "fraction_flagged": float(flags.mean()) if len(flags) else 0.0,
            "in_distribution": part(~flags), "flagged": part(flags)}  # fmt: skip


def exact(score: Any) -> float:
    """A score as written to a predictions file: every digit kept (repr round-trips), so a count recomputed from the
    file at a threshold that sits on a score is the count in metrics.json. Six decimals moved scores across it."""
    return float(score)


def write_evaluation(s: Scored, result: dict[str, Any], out: Path, n_bootstrap: int = 2000, seed: int = 0) -> None:
    """predictions.csv, val_predictions.csv, the figures, and metrics.json last (its presence means complete)."""
    labels, scores, threshold = s.labels, s.scores, s.threshold
    preds = predict(scores, threshold)
    rows = [
        {"path": p, "source": x.source, "label": int(y), "score": exact(v), "prediction": int(q)}
        for p, x, y, v, q in zip(s.paths, s.samples, labels, scores, preds)
    ]
    if s.ood_scores is not None and s.ood_flags is not None:
        for row, o, f in zip(rows, s.ood_scores, s.ood_flags):
            row["ood_score"], row["in_distribution"] = round(float(o), 4), int(not f)
    write_csv(out / "predictions.csv", rows)
    if result.get("per_group"):
        groups = group_scores(s.samples, labels, scores, result["per_group"]["aggregation"], s.lung_fractions)
        columns = ("group", "source", "label", "slices", "slices_counted")
        write_csv(out / "group_predictions.csv", [
            {**{k: r[k] for k in columns}, "score": exact(r["score"]), "prediction": int(r["score"] >= threshold)}
            for r in groups
        ])  # fmt: skip
    if s.split != "val" and s.val_scores is not None:  # the scores every threshold was chosen on, for the record
        val_rows = [
            {"path": p, "label": int(y), "score": exact(v)}
            for p, y, v in zip(s.val_paths or [], s.val_labels, s.val_scores)
        ]
        write_csv(out / "val_predictions.csv", val_rows)
    tp, tn, fp, fn = (result[k] for k in ("tp", "tn", "fp", "fn"))
    save_figure(confusion_matrix_figure(tp, tn, fp, fn, s.class_names), out / "confusion_matrix.png")
    band = roc_band(labels, scores, n_resamples=min(n_bootstrap, 1000), seed=seed) if n_bootstrap > 0 else None
    save_figure(roc_figure(labels.tolist(), scores.tolist(), result["auc"], band), out / "roc_curve.png")
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


def evaluate_run(
    run_dir: str | Path | list[str | Path],
    split: str = "test",
    checkpoint: str = "best",
    data_dir: str | Path | None = None,
    threshold: float | None = None,
    out_dir: str | Path | None = None,
    n_bootstrap: int = 2000,
    min_sensitivity: float = 0.95,
    seed: int = 0,
    calibrate: bool = False,
    tta: bool = False,
    on: str | None = None,
    per_group: str | None = None,
) -> dict[str, Any]:
    """Score -> summarise -> write: every image of `split` scored with the run's checkpoint, metrics.json,
    predictions and figures written into `out_dir` (default RUN_DIR/eval-<split>).

    Besides the metrics at the model's threshold, metrics.json holds 95% intervals and the operating points
    chosen on the validation split (Youden's J, sensitivity >= min_sensitivity), applied unchanged to `split`.
    Given several run folders, evaluates their ensemble (`ensemble_mean` of the members' probabilities, each
    member with its own preprocessing) at the first member's threshold; `out_dir` is then required.

    on: evaluate on an external labelled set instead (a source name, folder or CSV: every image of it) into
    eval-<name>/; thresholds still come from the run's own validation split. A warning counts the images whose
    bytes the run trained or validated on.

    per_group: also score each group of the set (a patient's folder, a CSV's group column) as one, its slices'
    scores aggregated this way (inference/predict.py's AGGREGATIONS); metrics.json's per_group and
    group_predictions.csv."""
    runs = [Path(r) for r in run_dir] if isinstance(run_dir, list) else [Path(run_dir)]
    if len(runs) > 1 and out_dir is None:
        raise ModelError(f"an ensemble of {len(runs)} runs needs an output folder (--out)")
    scored = score_runs(runs, split, checkpoint, data_dir, threshold, tta, on)
    if per_group:  # predict's rule for a volume: only DICOM slices whose HU shows lung count
        scored.lung_fractions = [slice_lung_fraction(x.path) for x in scored.samples]
    result = summarise(scored, n_bootstrap, min_sensitivity, seed, calibrate, per_group)
    write_evaluation(scored, result, Path(out_dir) if out_dir else runs[0] / f"eval-{scored.split}", n_bootstrap, seed)
    return result


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
        points.append(("youden", youden_threshold(val_labels, val_scores)))
        points.append(
            (f"sensitivity>={min_sensitivity:g}", threshold_for_sensitivity(val_labels, val_scores, min_sensitivity))
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


def compare_runs(run_dirs: list[str | Path], split: str = "test") -> list[dict[str, Any]]:
    """One row per run: model, epochs, best epoch, and the evaluated metrics on `split`."""
    rows = []
    for run in map(Path, run_dirs):
        metrics_path = run / f"eval-{split}" / "metrics.json"
        if not metrics_path.is_file():
            raise ModelError(
                f"run {run} has no {split} evaluation ({metrics_path} missing); "
                f"first run: covidct evaluate {run} --split {split}"
            )
        m = json.loads(metrics_path.read_text())
        summary_path = run / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        rows.append(
            {
                "run": run.name,
                "model": m["model"],
                "epochs": summary.get("epochs_run"),
                "best_epoch": m.get("epoch"),
                "n": m["n"],
                "accuracy": _num(m["accuracy"]),
                "accuracy_95ci": interval_text(m.get("ci95", {}).get("accuracy", {}).get("wilson")),
                "sensitivity": _num(m["sensitivity"]),
                "sensitivity_95ci": interval_text(m.get("ci95", {}).get("sensitivity", {}).get("wilson")),
                "specificity": _num(m["specificity"]),
                "specificity_95ci": interval_text(m.get("ci95", {}).get("specificity", {}).get("wilson")),
                "auc": _num(m["auc"]),
                "auc_95ci": interval_text(m.get("ci95", {}).get("auc", {}).get("delong")),
            }
        )
    _add_paired_tests(rows, [Path(r) / f"eval-{split}" / "predictions.csv" for r in run_dirs])
    configs = [_config_or_empty(Path(r)) for r in run_dirs]
    for row, diff in zip(rows, config_differences(configs)):
        row["settings"] = diff
    return rows


def read_predictions(path: Path) -> dict[str, tuple[int, float]]:
    """{class folder/file name: (label, score)}: keyed so that runs made from other folders still pair up."""
    with open(path, newline="") as f:
        return {"/".join(Path(r["path"]).parts[-2:]): (int(r["label"]), float(r["score"])) for r in csv.DictReader(f)}


def _add_paired_tests(rows: list[dict[str, Any]], prediction_files: list[Path]) -> None:
    """DeLong's paired test of each run's AUC against the first run's, on the images both scored."""
    if not prediction_files[0].is_file():
        return
    first = read_predictions(prediction_files[0])
    for row, path in zip(rows, prediction_files):
        row["auc_diff_vs_first"], row["diff_95ci"], row["p_delong"] = "", "", ""
        if path == prediction_files[0] or not path.is_file():
            continue
        other = read_predictions(path)
        common = sorted(set(first) & set(other))
        if len(common) < len(first) or any(first[k][0] != other[k][0] for k in common):
            row["diff_95ci"] = "different images: no paired test"
            continue
        y = np.array([first[k][0] for k in common])
        t = delong_paired_test(y, [other[k][1] for k in common], [first[k][1] for k in common])
        row["auc_diff_vs_first"], row["diff_95ci"] = t.difference, interval_text(t.interval.as_list())
        row["p_delong"] = t.p_value


def _config_or_empty(run: Path) -> dict[str, Any]:
    """The config as saved: raw, so a field that an older version did not have shows as missing, not as
    today's default."""
    import yaml

    path = run / "config.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def config_differences(
    configs: list[dict[str, Any]], ignore: tuple[str, ...] = ("out", "data_dir", "extra")
) -> list[str]:
    """For each config, 'key=value' for the settings that are not the same in all of them."""
    keys = sorted({k for c in configs for k in c} - set(ignore))
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    return [", ".join(f"{k}={c.get(k)}" for k in varying) for c in configs]


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def store_threshold(
    run_dir: str | Path,
    choose: str,
    min_sensitivity: float = 0.95,
    checkpoint: str = "best",
    data_dir: str | Path | None = None,
    on: str | None = None,
) -> dict[str, Any]:
    """Choose a threshold on the validation split ('youden', 'sensitivity' or a number) and store it in the
    checkpoint, so evaluation, prediction and serving use it. Writes RUN_DIR/threshold.json as the record.

    on: choose it on that labelled set instead (a source, folder or CSV, as `evaluate --on`): a site's own
    validation data. Another hospital's scanners and windows shift a model's scores, so an operating point set on the
    training sources' validation split can miss (sars-cov-2-ct at covid-ct's 0.5: sensitivity 0.39, specificity
    0.62); the AUC does not change, only where the line is drawn. Figures on the same set at that threshold are then
    optimistic: evaluate the site's other patients."""
    run = RunDir.at(run_dir)
    ckpt_path = find_checkpoint(run.path, checkpoint)
    if on is not None and choose not in ("youden", "sensitivity"):
        raise ConfigError(f"--on chooses the threshold on a set: --choose youden or sensitivity, not {choose!r}")
    if choose in ("youden", "sensitivity"):
        value, where, chosen = threshold_by_rule(run, ckpt_path, choose, min_sensitivity, data_dir, on)
    else:
        value, where, chosen = given_threshold(choose), None, None
    previous = write_checkpoint_threshold(ckpt_path, value)
    record = {
        "threshold": float(value),
        "rule": choose if choose in ("youden", "sensitivity") else "given",
        "min_sensitivity": min_sensitivity if choose == "sensitivity" else None,
        "chosen_on": where,
        "set": on,
        "checkpoint": ckpt_path.name,
        "previous_threshold": float(previous),
        "val_metrics" if on is None else "set_metrics": chosen,
    }
    write_json(run.threshold_path, record)
    card_path = run.export_dir / "model.json"
    if card_path.is_file():  # the export carries the same operating point: predict and serve load it
        card = json.loads(card_path.read_text())
        card["threshold"] = float(value)
        card["threshold_chosen_on"] = where or "given"
        write_json(card_path, card)
        record["export_updated"] = str(card_path)
    return record


def threshold_by_rule(run: RunDir, ckpt_path: Path, choose: str, min_sensitivity: float,
                      data_dir: str | Path | None, on: str | None) -> tuple[float, str, dict[str, Any]]:  # fmt: skip
    """(threshold, where it was chosen, the metrics there) by Youden's J or a minimum sensitivity, on the validation
    split or on the labelled set `on`."""
    module = load_classifier(ckpt_path)
    if on is None:
        where, samples = "val", run.data(data_dir).splits["val"]
    else:
        where, samples, _ = external_samples(run, on)
    _, labels, scores = predict_scores(module, eval_dataset(module, samples))
    if len(np.unique(labels)) < 2:
        what = "the validation split" if on is None else f"--on {on}"
        raise DataError(f"{what} holds one class only: no threshold can be chosen on it")
    if choose == "youden":
        value = youden_threshold(labels, scores)
    else:
        value = threshold_for_sensitivity(labels, scores, min_sensitivity)
    return value, where, binary_metrics(labels, scores, value).to_dict()


def given_threshold(choose: str) -> float:
    try:
        value = float(choose)
    except ValueError:
        raise ConfigError(f"--choose must be youden, sensitivity or a number in [0, 1], got {choose!r}") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"--choose must be youden, sensitivity or a number in [0, 1], got {choose!r}")
    return value


def write_checkpoint_threshold(ckpt_path: Path, value: float) -> float:
    """Store the threshold in the checkpoint's hyperparameters (for a checkpoint used outside its run folder);
    returns the one it replaces. Read with weights_only: a checkpoint carrying pickled code is refused, never run."""
    ckpt = read_checkpoint(ckpt_path)
    if not isinstance(ckpt.get("hyper_parameters"), dict):
        raise ModelError(f"checkpoint {ckpt_path} is not a covidct checkpoint (no hyperparameters)")
    previous = ckpt["hyper_parameters"].get("threshold", 0.5)  # kept in the record: `--choose PREVIOUS` restores it
    ckpt["hyper_parameters"]["threshold"] = float(value)
    atomic_write(ckpt_path, lambda p: torch.save(ckpt, p))
    return float(previous)
