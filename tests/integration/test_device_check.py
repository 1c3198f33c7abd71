"""benchmarks/device_check.sh --dry-run: every step of the GPU check, tiny, on CPU (so the script that runs on a
lent GPU machine is known to work before it gets there); and it refuses to start without a GPU."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_runs_every_step(tmp_path):
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "CI": ""},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    steps = results["steps"]
    want = [
        "a_vgg19_bn_60_epochs",
        "a_default_60_epochs",
        "b_default_seed1",
        "b_default_seed2",
        "b_default_seed3",
        "c_pretrain_simclr",
        "c_fine_tuned_from_pretrain",
        "d_ddp_one_gpu",
    ]
    assert list(steps) == want
    assert all(s["status"] == "ok" for s in steps.values()), steps
    assert all("test" in steps[f"b_default_seed{k}"] for k in (1, 2, 3))
    assert json.loads((tmp_path / "versions.json").read_text())["covidct"]
    assert "| step |" in (tmp_path / "results.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present here")
def test_refuses_without_a_gpu(tmp_path):
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "no NVIDIA GPU visible" in out.stderr
