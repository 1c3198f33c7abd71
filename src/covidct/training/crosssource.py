"""Leave-one-source-out: train on each source alone, on all but one (with three or more) and on all, then score
every source: the train-source x test-source matrix. A held-out source is scored on all its images; a source the
model trained on, on its own test split. Thresholds come from the training sources' validation split (Youden's J),
never from the source being tested. This matrix is how recipes are chosen: a change wins when it raises the AUC on
held-out sources."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidct.config import TrainConfig
from covidct.data import ImageDataset
from covidct.data.probe import statistics_of
from covidct.data.sources import load_source, parse_source
from covidct.data.transforms import view_transform
from covidct.evaluation.drivers import driver_warnings, drivers_text, score_drivers
from covidct.evaluation.metrics import binary_metrics, youden_threshold
from covidct.evaluation.statistics import delong_interval
from covidct.fileio import write_csv, write_json, write_text
from covidct.inference.load import LoadedModel, load_checkpoint
from covidct.runs import RunDir
from covidct.tables import table_markdown


def trainings(sources: list[str]) -> list[list[str]]:
    """Each source alone, all but one (with three or more sources), and all together."""
    out = [[s] for s in sources]
    if len(sources) > 2:
        out += [[s for s in sources if s != held] for held in sources]
    return [*out, list(sources)]


def scorer(run: RunDir) -> LoadedModel:
    """The run's best checkpoint, on the GPU when there is one: the matrix scores every image of a held-out source,
    thousands per training."""
    model = load_checkpoint(run.checkpoint("best"), run)
    return model.to("cuda") if torch.cuda.is_available() else model


def score(model: LoadedModel, samples: list) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels, scores) of the model on these samples."""
    from covidct.evaluation.evaluate import predict_scores

    return predict_scores(model, ImageDataset(samples, model.transform))


def score_rows(paths: list[str], labels: np.ndarray, scores: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """One row per image of a cell: what was scored and how, for error analysis (which held-out images fail)."""
    return [{"path": p, "label": int(y), "score": float(s), "predicted": int(s >= threshold),
             "correct": int(int(s >= threshold) == int(y))} for p, y, s in zip(paths, labels, scores)]  # fmt: skip


def cell(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    m = binary_metrics(labels, scores, threshold)
    out = {"n": m.n, "auc": m.auc, "accuracy": m.accuracy, "sensitivity": m.sensitivity,
           "specificity": m.specificity, "threshold": threshold}  # fmt: skip
    if len(np.unique(labels)) == 2:
        out["auc_ci95"] = delong_interval(labels, scores)[2].as_list()
    return out


def caveats(config: TrainConfig, n_sources: int) -> list[str]:
    """What this matrix cannot show for this recipe, written beside it."""
    out = [f"One training per row (seed {config.seed}): held-out cells move with the seed (by up to 0.14 AUC in "
           "benchmarks/GENERALIZATION.md), so compare recipes over several seeds (--seed)."]  # fmt: skip
    if n_sources == 2 and config.domain_adversarial > 0:
        out.append("With two sources the held-out rows train on one source, where a domain-adversarial head is off: "
                   "--domain-adversarial changes only the row trained on both.")  # fmt: skip
    return out


def run_crosssource(config: TrainConfig, out_dir: str | Path, progress: bool = False, n_bootstrap: int = 0) -> Path:
    from covidct.training.fit import train

    out = Path(out_dir)
    sources = list(config.sources)
    names = [parse_source(s)[0] for s in sources]
    data = {name: load_source(spec, config.seed) for name, spec in zip(names, sources)}  # fails before training
    rows, records = [], []
    statistics: dict[str, dict[str, np.ndarray]] = {}
    drivers: list[str] = []
    for train_set in trainings(sources):
        train_names = [parse_source(s)[0] for s in train_set]
        label = " + ".join(train_names)
        cfg = dataclasses.replace(config, sources=train_set, out=str(out / "runs"))
        start = time.perf_counter()
        run = RunDir(train(cfg, progress=progress))
        wall = time.perf_counter() - start
        val = run.data().splits["val"]
        model = scorer(run)
        _, val_labels, val_scores = score(model, val)
        threshold = youden_threshold(val_labels, val_scores)
        row: dict[str, Any] = {"trained on": label}
        record: dict[str, Any] = {"trained_on": train_names, "run": str(run.path), "train_seconds": round(wall, 1),
                                  "threshold": threshold, "threshold_chosen_on": "val of the training sources",
                                  "cells": {}}  # fmt: skip
        for name in names:
            held_out = name not in train_names
            samples = [s for sp in ("train", "val", "test") for s in data[name].splits[sp]] if held_out else \
                data[name].splits["test"]  # fmt: skip
            paths, labels, scores = score(model, samples)
            write_csv(run.path / f"scores-{name}.csv", score_rows(paths, labels, scores, threshold))
            c = cell(labels, scores, threshold)
            c["held_out"] = held_out
            if held_out:  # what the scores follow where the model never trained (statistics once per source)
                if name not in statistics:
                    statistics[name] = statistics_of(paths, view_transform(model.preprocessing))
                c["score_drivers"] = score_drivers(labels, scores, statistics[name])
                drivers.append(f"{label} -> {name}: {drivers_text(c['score_drivers'])}.")
                drivers += [f"warning: {label} -> {name}: {w}." for w in driver_warnings(c["score_drivers"])]
            record["cells"][name] = c
            ci = c.get("auc_ci95")
            row[f"{name} AUC"] = f"{c['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            row[f"{name} acc/sens/spec"] = f"{c['accuracy']:.3f}/{c['sensitivity']:.3f}/{c['specificity']:.3f}"
            row[f"{name} scored"] = "held out (all images)" if held_out else "in source (test split)"
        row["train s"] = round(wall)
        rows.append(row)
        records.append(record)
    write_csv(out / "matrix.csv", rows)
    held = [c["auc"] for r in records for c in r["cells"].values() if c["held_out"]]
    note = (f"\nMean held-out-source AUC: {np.mean(held):.3f} over {len(held)} cells. AUC with DeLong 95% interval; "
            "accuracy, sensitivity, specificity at the Youden threshold chosen on the training sources' validation "
            "split.\n")  # fmt: skip
    limits = caveats(config, len(names))
    note += "".join(f"\n{c}\n" for c in limits)
    if drivers:  # evaluation/drivers.py: rank correlation of the held-out scores with simple image statistics
        note += (
            "\nWhat the held-out scores follow (Spearman rho with image statistics; the statistic's own class AUC):\n\n"
        )
        note += "".join(f"- {d}\n" for d in drivers)
    write_text(out / "matrix.md", table_markdown(rows) + note)
    write_json(out / "matrix.json", {"sources": sources, "config": config.to_dict(), "trainings": records,
                                     "mean_held_out_auc": float(np.mean(held)) if held else None,
                                     "caveats": limits})  # fmt: skip
    _heatmap(records, names, out / "matrix.png")
    return out


def _heatmap(records: list[dict[str, Any]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covidct.plotting import save_figure

    grid = np.array([[r["cells"][n]["auc"] for n in names] for r in records], dtype=float)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 1.2 + 0.6 * len(records)))
    ax.imshow(grid, cmap="RdYlGn", vmin=0.3, vmax=1.0)
    for (i, j), v in np.ndenumerate(grid):
        held = records[i]["cells"][names[j]]["held_out"]
        ax.text(j, i, f"{v:.2f}" + ("\nheld out" if held else ""), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), labels=names)
    ax.set_yticks(range(len(records)), labels=[" + ".join(r["trained_on"]) for r in records])
    ax.set_xlabel("scored on")
    ax.set_ylabel("trained on")
    ax.set_title("AUC by training and test source")
    save_figure(fig, path)


__all__ = ["caveats", "json", "run_crosssource", "trainings"]
