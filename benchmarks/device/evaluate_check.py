"""On a lent GPU: `covidct evaluate` scores on the GPU when there is one; are its figures those of the CPU?

Trains a tiny run on synthetic images (tests/conftest.py), evaluates it on its test split and on an external folder
with CUDA visible and again with CUDA hidden, and compares every image's score and the metrics. On a machine
without a GPU both passes run on the CPU and must agree exactly.

    PYTHONPATH=src:. python3 benchmarks/device/evaluate_check.py /tmp/evalcheck
"""

import csv
import json
import sys
from pathlib import Path
from unittest import mock

import torch
from tests.conftest import TINY_COUNTS, make_covidct_layout, make_sars_layout

from covidct.cli import main

root = Path(sys.argv[1])
data = make_covidct_layout(root / "covid-ct", TINY_COUNTS)
other = make_sars_layout(root / "other", 20, 20, seed=3)
args = [
    "--model",
    "timm:resnet10t",
    "--no-pretrained",
    "--data-dir",
    str(data),
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--no-tensorboard",
    "--out",
    str(root / "runs"),
]
assert main(["train", *args]) == 0
run = next((root / "runs").iterdir())


def scores(out: Path) -> dict[str, float]:
    with open(out / "predictions.csv", newline="") as f:
        return {r["path"]: float(r["score"]) for r in csv.DictReader(f)}


worst = 0.0
for name, extra in (("test", []), ("other", ["--on", f"other={other}"])):
    gpu, cpu = root / f"{name}-gpu", root / f"{name}-cpu"
    assert main(["evaluate", str(run), "--bootstrap", "0", "--out", str(gpu), *extra]) == 0
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert main(["evaluate", str(run), "--bootstrap", "0", "--out", str(cpu), *extra]) == 0
    a, b = scores(gpu), scores(cpu)
    assert a.keys() == b.keys() and len(a) >= 4
    diff = max(abs(a[k] - b[k]) for k in a)
    worst = max(worst, diff)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (gpu, cpu))
    print(
        f"{name}: {len(a)} images, max |score gpu - cpu| {diff:.2e}, AUC {ma['auc']:.6f} vs {mb['auc']:.6f}, "
        f"TP/TN/FP/FN {ma['tp']}/{ma['tn']}/{ma['fp']}/{ma['fn']} vs {mb['tp']}/{mb['tn']}/{mb['fp']}/{mb['fn']}"
    )
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("PASS" if worst < 1e-4 else "FAIL", f"worst {worst:.2e}")
