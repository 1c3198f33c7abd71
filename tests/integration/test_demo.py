"""`make demo`'s own command lines, run by make on tiny synthetic data (one epoch, a small network from scratch):
the study table, the second source scored and never trained on, the report."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_COUNTS, make_covidct_layout, make_sars_layout

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_runs_its_commands_on_tiny_data(tmp_path):
    if shutil.which("make") is None or not (ROOT / ".venv" / "bin" / ".installed").is_file():
        pytest.skip("make and the project's .venv (make venv) are needed")
    data = make_covidct_layout(tmp_path / "covid-ct", TINY_COUNTS)
    sars = make_sars_layout(tmp_path / "sars", 6, 6)
    run = tmp_path / "runs" / "demo"
    args = [
        "make",
        "-C",
        str(ROOT),
        "--no-print-directory",
        "demo",
        f"DATA_DIR={data}",
        f"SARS_DIR={sars}",
        f"RUNS={tmp_path / 'runs'}",
        f"DEMO_RUN={run}",
        "MODEL=timm:resnet10t",
        "DEMO_ARGS=--epochs 1 --no-pretrained --batch-size 8 --num-workers 0 --precision 32",
    ]
    env = {**os.environ, "COVIDCT_ALLOW_PARTIAL_SOURCES": "1", "COVIDCT_NO_PROGRESS": "1"}
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "study: VGG-19-bn" in out.stdout and "0.813" in out.stdout and "(this run)" in out.stdout
    assert "cannot be fetched offline" in out.stdout or "cannot be reached offline" in out.stdout
    assert "also scored, never trained on: sars-cov-2-ct" in out.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["counts"]["train"] == TINY_COUNTS["train"]  # trained on COVID-CT alone: sars only scored
    assert (run / "eval-test" / "metrics.json").is_file() and (run / "eval-sars-cov-2-ct" / "metrics.json").is_file()
    assert (run / "report.html").is_file() and (tmp_path / "runs" / "samples.png").is_file()
    assert json.loads((run / "eval-sars-cov-2-ct" / "metrics.json").read_text())["ood"] is not None
