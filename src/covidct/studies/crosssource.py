"""Leave-one-source-out: train on each source alone, on all but one (with three or more) and on all, then score
every source: the train-source x test-source matrix. A held-out source is scored on all its images; a source the
model trained on, on its own test split. Thresholds come from the training sources' validation split (Youden's J),
never from the source being tested. This matrix is how recipes are chosen: a change wins when it raises the AUC on
held-out sources."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidct.config import TrainConfig
from covidct.data import ImageDataset
from covidct.data.audit.shortcut import view_statistics_table
from covidct.data.sources import load_source, parse_source
from covidct.data.transforms import view_transform
from covidct.errors import ConfigError
from covidct.evaluation.metrics import binary_metrics
from covidct.evaluation.rules import choose_by_rule
from covidct.evaluation.score_drivers import driver_warnings, drivers_text, score_drivers
from covidct.evaluation.scoring import predict_scores
from covidct.evaluation.statistics import delong_interval
from covidct.fileio import write_csv, write_json, write_text
from covidct.fileio.tables import table_markdown
from covidct.inference.load import load_checkpoint
from covidct.inference.loaded import LoadedModel
from covidct.runs import RunDir
from covidct.training.fit import train
from covidct.verdict import positive


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
    return predict_scores(model, ImageDataset(samples, model.transform))


def score_rows(paths: list[str], labels: np.ndarray, scores: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """One row per image of a cell: what was scored and how, for error analysis (which held-out images fail)."""
    return [
        {
            "path": p,
            "label": int(y),
            "score": float(s),
            "predicted": int(positive(s, threshold)),
            "correct": int(int(positive(s, threshold)) == int(y)),
        }
        for p, y, s in zip(paths, labels, scores)
    ]


def cell(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    m = binary_metrics(labels, scores, threshold)
    out = {
        "n": m.n,
        "auc": m.auc,
        "accuracy": m.accuracy,
        "sensitivity": m.sensitivity,
        "specificity": m.specificity,
        "threshold": threshold,
    }
    if len(np.unique(labels)) == 2:
        out["auc_ci95"] = delong_interval(labels, scores)[2].as_list()
    return out


def caveats(config: TrainConfig) -> list[str]:
    """What this matrix cannot show for this recipe, written beside it."""
    out = [
        f"One training per row (seed {config.seed}): held-out cells move with the seed (by up to 0.14 AUC in "
        "benchmarks/GENERALIZATION.md), so compare recipes over several seeds (--seeds 42 7 1)."
    ]
    return out


def run_crosssource(config: TrainConfig, out_dir: str | Path, progress: bool = False, n_bootstrap: int = 0) -> Path:
    """Train on every combination of the sources (trainings()), score every source with each model (its test split
    where it was trained on, all of it where held out) and write the matrix (csv, md, json, png) into out_dir."""
    out = Path(out_dir)
    sources = list(config.sources)
    names = [parse_source(s)[0] for s in sources]
    data = {name: load_source(spec, config.seed) for name, spec in zip(names, sources)}  # fails before training
    matrix = Matrix(config, data, out, progress)
    rows, records = [], []
    for train_set in trainings(sources):
        row, record = train_and_score(matrix, train_set)
        rows.append(row)
        records.append(record)
    write_matrix(matrix, sources, rows, records)
    return out


@dataclass
class Matrix:
    """One cross-source matrix being made: its recipe, every source's data, its folder, and what its rows gather
    (each held-out source's image statistics, computed once; the lines on what held-out scores follow)."""

    config: TrainConfig
    data: dict[str, Any]
    out: Path
    progress: bool = False
    statistics: dict[str, Any] = field(default_factory=dict)
    drivers: list[str] = field(default_factory=list)


def train_and_score(matrix: Matrix, train_set: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One training of the matrix and its row: each source scored at the threshold chosen on validation."""
    config, data, out, statistics, drivers = matrix.config, matrix.data, matrix.out, matrix.statistics, matrix.drivers
    train_names = [parse_source(s)[0] for s in train_set]
    label = " + ".join(train_names)
    start = time.perf_counter()
    # a row of the matrix is scored, never served: no ONNX graph of it
    row = dataclasses.replace(config, sources=train_set, out=str(out / "runs"), onnx=False)
    run = RunDir(train(row, progress=matrix.progress))
    wall = time.perf_counter() - start
    model = scorer(run)
    _, val_labels, val_scores = score(model, run.data().splits["val"])
    threshold = choose_by_rule("youden", val_labels, val_scores)
    row: dict[str, Any] = {"trained on": label}
    record: dict[str, Any] = {
        "trained_on": train_names,
        "run": str(run.path),
        "train_seconds": round(wall, 1),
        "threshold": threshold,
        "threshold_chosen_on": "val of the training sources",
        "cells": {},
    }
    for name, source in data.items():
        held_out = name not in train_names
        samples = (
            [s for sp in ("train", "val", "test") for s in source.splits[sp]] if held_out else source.splits["test"]
        )
        paths, labels, scores = score(model, samples)
        write_csv(run.scores_path(name), score_rows(paths, labels, scores, threshold))
        c = cell(labels, scores, threshold)
        c["held_out"] = held_out
        if held_out:  # what the scores follow where the model never trained (statistics once per source)
            if name not in statistics:
                statistics[name] = view_statistics_table(paths, view_transform(model.preprocessing))
            c["score_drivers"] = score_drivers(labels, scores, statistics[name])
            drivers.append(f"{label} -> {name}: {drivers_text(c['score_drivers'])}.")
            drivers += [f"warning: {label} -> {name}: {w}." for w in driver_warnings(c["score_drivers"])]
        record["cells"][name] = c
        row.update(cell_columns(name, c))
    row["train s"] = round(wall)
    return row, record


def cell_columns(name: str, c: dict[str, Any]) -> dict[str, str]:
    ci = c.get("auc_ci95")
    return {
        f"{name} AUC": f"{c['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""),
        f"{name} acc/sens/spec": f"{c['accuracy']:.3f}/{c['sensitivity']:.3f}/{c['specificity']:.3f}",
        f"{name} scored": "held out (all images)" if c["held_out"] else "in source (test split)",
    }


def write_matrix(matrix: Matrix, sources: list[str], rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """matrix.csv, matrix.md (with its caveats and what the held-out scores follow), matrix.json and matrix.png."""
    out, config, drivers = matrix.out, matrix.config, matrix.drivers
    names = list(matrix.data)
    write_csv(out / "matrix.csv", rows)
    held = [c["auc"] for r in records for c in r["cells"].values() if c["held_out"]]
    note = (
        f"\nMean held-out-source AUC: {np.mean(held):.3f} over {len(held)} cells. AUC with DeLong 95% interval; "
        "accuracy, sensitivity, specificity at the Youden threshold chosen on the training sources' validation "
        "split.\n"
    )
    limits = caveats(config)
    note += "".join(f"\n{c}\n" for c in limits)
    if drivers:  # evaluation/score_drivers.py: rank correlation of the held-out scores with simple image statistics
        note += (
            "\nWhat the held-out scores follow (Spearman rho with image statistics; the statistic's own class AUC):\n\n"
        )
        note += "".join(f"- {d}\n" for d in drivers)
    write_text(out / "matrix.md", table_markdown(rows) + note)
    write_json(
        out / "matrix.json",
        {
            "sources": sources,
            "config": config.to_dict(),
            "trainings": records,
            "mean_held_out_auc": float(np.mean(held)) if held else None,
            "caveats": limits,
        },
    )
    _heatmap(records, names, out / "matrix.png")


def seed_summary(matrices: list[dict[str, Any]]) -> dict[str, Any]:
    """The matrices of one recipe at several seeds, cell by cell (pure: matrix.json contents in, numbers out): each
    seed's AUC, their mean, standard deviation (n - 1), min and max, the mean accuracy at each seed's threshold, and
    the mean held-out AUC of each seed. Why: a seed moves a held-out cell by up to 0.14 AUC
    (benchmarks/GENERALIZATION.md), more than most levers do, so recipes are compared over seeds."""
    first = matrices[0]
    for m in matrices[1:]:
        if [t["trained_on"] for t in m["trainings"]] != [t["trained_on"] for t in first["trainings"]]:
            raise ConfigError("the matrices of a seed summary must train on the same sources")

    def spread(values: list[float]) -> dict[str, Any]:
        v = np.asarray(values, dtype=float)
        sd = float(np.std(v, ddof=1)) if len(v) > 1 else None
        return {
            "values": [float(x) for x in v],
            "mean": float(v.mean()),
            "sd": sd,
            "min": float(v.min()),
            "max": float(v.max()),
        }

    cells = []
    for i, t in enumerate(first["trainings"]):
        for name, c in t["cells"].items():
            per_seed = [m["trainings"][i]["cells"][name] for m in matrices]
            cells.append(
                {
                    "trained_on": t["trained_on"],
                    "scored_on": name,
                    "held_out": c["held_out"],
                    "auc": spread([x["auc"] for x in per_seed]),
                    "accuracy_mean": float(np.mean([x["accuracy"] for x in per_seed])),
                }
            )
    held = [m["mean_held_out_auc"] for m in matrices if m["mean_held_out_auc"] is not None]
    return {
        "seeds": [m["config"]["seed"] for m in matrices],
        "cells": cells,
        "mean_held_out_auc": spread(held) if held else None,
    }


def run_seeds(
    config: TrainConfig, seeds: list[int], out_dir: str | Path, progress: bool = False, n_bootstrap: int = 0
) -> Path:
    """One leave-one-source-out matrix per seed (OUT/seed-N/, as run_crosssource writes it), then seeds.json,
    seeds.csv and seeds.md: every cell's mean and spread over the seeds."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"--seeds must name distinct seeds, got {seeds}")
    out = Path(out_dir)
    matrices = []
    for seed in seeds:
        folder = run_crosssource(dataclasses.replace(config, seed=seed), out / f"seed-{seed}", progress, n_bootstrap)
        matrices.append(json.loads((folder / "matrix.json").read_text()))
    summary = seed_summary(matrices)
    rows = []
    for c in summary["cells"]:
        a = c["auc"]
        sd = f" (sd {a['sd']:.3f})" if a["sd"] is not None else ""
        rows.append(
            {
                "trained on": " + ".join(c["trained_on"]),
                "scored on": c["scored_on"],
                "scored": "held out (all images)" if c["held_out"] else "in source (test split)",
                "AUC mean (sd)": f"{a['mean']:.3f}{sd}",
                "AUC min-max": f"{a['min']:.3f}-{a['max']:.3f}",
                "AUC per seed": " / ".join(f"{v:.3f}" for v in a["values"]),
                "accuracy mean": f"{c['accuracy_mean']:.3f}",
            }
        )
    write_csv(out / "seeds.csv", rows)
    held = summary["mean_held_out_auc"]
    note = f"\nSeeds {', '.join(map(str, seeds))}; one matrix per seed in seed-N/."
    if held:
        sd = f" (sd {held['sd']:.3f})" if held["sd"] is not None else ""
        note += f" Mean held-out-source AUC {held['mean']:.3f}{sd}, per seed " + " / ".join(
            f"{v:.3f}" for v in held["values"]
        )
        note += ". A recipe beats another when its held-out cells are higher across the seeds, not in one of them.\n"
    write_text(out / "seeds.md", table_markdown(rows) + "\n" + note)
    write_json(out / "seeds.json", {"sources": list(config.sources), "config": config.to_dict(), **summary})
    return out


def _heatmap(records: list[dict[str, Any]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covidct.fileio.plotting import save_figure

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


__all__ = ["caveats", "json", "run_crosssource", "run_seeds", "seed_summary", "trainings"]
