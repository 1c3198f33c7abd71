"""Data-parallel training with Lightning's DDP on CPU (gloo): 2 processes on 127.0.0.1 (issue 7)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from covidct.data import load_splits
from covidct.evaluation.evaluate import evaluate_run
from tests.conftest import make_covidct_layout

# 9 validation images: the distributed sampler pads 2 ranks to 5 + 5, repeating one image.
COUNTS = {
    "train": {"COVID": 8, "NonCOVID": 8},
    "val": {"COVID": 5, "NonCOVID": 4},
    "test": {"COVID": 2, "NonCOVID": 2},
}


@pytest.mark.slow
def test_two_processes_score_every_validation_image_once(tmp_path):
    data = make_covidct_layout(tmp_path / "d", COUNTS)
    run = tmp_path / "run"
    env = {**os.environ, "COVIDCT_NO_PROGRESS": "1", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    args = [
        "--model",
        "timm:resnet10t",
        "--no-pretrained",
        "--data-dir",
        str(data),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--precision",
        "32",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--run-dir",
        str(run),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "covidct", "train", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    rows = list(csv.DictReader((run / "val_last_epoch.csv").open()))
    val = load_splits(data).splits["val"]
    assert sorted(int(r["index"]) for r in rows) == list(range(len(val)))  # every image once, no padding copy
    assert sorted(r["path"] for r in rows) == sorted(str(s.path) for s in val)
    history = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in history] == [1, 2]  # one writer: no duplicated rows
    single = evaluate_run(run, "val", checkpoint="last", out_dir=tmp_path / "single", n_bootstrap=0)
    assert float(history[-1]["val_acc"]) == pytest.approx(single["accuracy"], abs=1e-6)
    assert float(history[-1]["val_auc"]) == pytest.approx(single["auc"], abs=1e-4)
    scores = {r["path"]: float(r["score"]) for r in rows}
    again = {r["path"]: float(r["score"]) for r in csv.DictReader((tmp_path / "single" / "predictions.csv").open())}
    assert scores.keys() == again.keys()
    assert all(abs(scores[p] - again[p]) < 1e-4 for p in scores)
