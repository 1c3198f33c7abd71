"""Does a refactor change any answer? Scores a trained run's test split through every path a user takes (predict on
the run's ONNX graph, predict on PyTorch, evaluate, the export's safetensors and ONNX files) and writes them to one
JSON; `--against OLD.json` compares with a file written at another commit and prints the largest differences.

    .venv/bin/python benchmarks/same_scores.py RUN IMAGES --out /tmp/scores-old.json       # at the old commit
    .venv/bin/python benchmarks/same_scores.py RUN IMAGES --out /tmp/scores-new.json --against /tmp/scores-old.json

The run is copied to a temporary folder first: evaluate and export write into it."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

from covidct.cli import main


def predicted(model: Path, images: Path, out: Path) -> dict[str, dict[str, str]]:
    if main(["predict", str(model), str(images), "--out", str(out)]) != 0:
        raise SystemExit(f"predict {model} failed")
    return {Path(r["path"]).name: r for r in csv.DictReader(out.open())}


def evaluated(run: Path) -> dict[str, dict[str, str]]:
    if main(["evaluate", str(run), "--split", "test", "--bootstrap", "0"]) != 0:
        raise SystemExit("evaluate failed")
    return {Path(r["path"]).name: r for r in csv.DictReader((run / "eval-test" / "predictions.csv").open())}


def all_paths(run: Path, images: Path, work: Path) -> dict[str, dict[str, dict[str, str]]]:
    copy = Path(shutil.copytree(run, work / "run", ignore=shutil.ignore_patterns("tensorboard", "eval-*")))
    out = {"predict (run graph)": predicted(copy, images, work / "graph.csv")}
    graph = copy / "checkpoints" / "best.onnx"
    graph.rename(graph.with_suffix(".off"))
    out["predict (PyTorch)"] = predicted(copy, images, work / "torch.csv")
    out["evaluate"] = evaluated(copy)
    if main(["export", str(copy), "--out", str(work / "export"), "--format", "both"]) != 0:
        raise SystemExit("export failed")
    out["export (ONNX)"] = predicted(work / "export", images, work / "export.csv")
    (work / "export" / "model.onnx").unlink()
    out["export (safetensors)"] = predicted(work / "export", images, work / "st.csv")
    return out


def largest_differences(new: dict, old: dict) -> dict[str, dict[str, float | int]]:
    report = {}
    for path, rows in new.items():
        before = old[path]
        common = sorted(set(rows) & set(before))
        score = max(abs(float(rows[k]["score"]) - float(before[k]["score"])) for k in common)
        labels = sum(
            (rows[k].get("prediction"), rows[k].get("label")) != (before[k].get("prediction"), before[k].get("label"))
            for k in common
        )
        flags = sum(rows[k].get("in_distribution") != before[k].get("in_distribution") for k in common)
        report[path] = {
            "images": len(common),
            "largest_score_difference": score,
            "labels_changed": labels,
            "flags_changed": flags,
        }
    return report


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--against", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scores = all_paths(args.run, args.images, Path(tmp))
    args.out.write_text(json.dumps(scores))
    if args.against:
        print(json.dumps(largest_differences(scores, json.loads(args.against.read_text())), indent=1))


if __name__ == "__main__":
    cli()
