"""Comparing evaluated runs: one row per run, paired DeLong tests against the first, the settings that differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import ModelError
from covidct.evaluation.statistics import (
    delong_paired_test,
)
from covidct.fileio.tables import interval_text
from covidct.runs import RunDir
from covidct.runs.records import prediction_rows


def compare_runs(run_dirs: list[str | Path], split: str = "test") -> list[dict[str, Any]]:
    """One row per run: model, epochs, best epoch, and the evaluated metrics on `split`."""
    rows = []
    for run in map(Path, run_dirs):
        m = RunDir(run).evaluation(split)
        if m is None:
            raise ModelError(
                f"run {run} has no {split} evaluation ({RunDir(run).eval_dir(split) / 'metrics.json'} missing); "
                f"first run: covidct evaluate {run} --split {split}"
            )
        summary = RunDir(run).summary()
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
    _add_paired_tests(rows, [RunDir(Path(r)).eval_dir(split) / "predictions.csv" for r in run_dirs])
    configs = [RunDir(Path(r)).raw_config() for r in run_dirs]  # as saved: a field older runs lack shows as missing
    for row, diff in zip(rows, config_differences(configs)):
        row["settings"] = diff
    return rows


def read_predictions(path: Path) -> dict[str, tuple[int, float]]:
    """{class folder/file name: (label, score)}: keyed so that runs made from other folders still pair up."""
    return {"/".join(Path(r["path"]).parts[-2:]): (r["label"], r["score"]) for r in prediction_rows(path)}


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


def config_differences(
    configs: list[dict[str, Any]], ignore: tuple[str, ...] = ("out", "data_dir", "extra")
) -> list[str]:
    """For each config, 'key=value' for the settings that are not the same in all of them."""
    keys = sorted({k for c in configs for k in c} - set(ignore))
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    return [", ".join(f"{k}={c.get(k)}" for k in varying) for c in configs]


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)
