"""Every model form the README names (run folder, export folder, .safetensors file, ONNX export, .ckpt file) is
exported, predicted with and served through the real command line."""

import csv
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from covidct.cli import main
from tests.conftest import synthetic_ct


@pytest.fixture(scope="module")
def forms(trained_run, tmp_path_factory):
    """{form: path}; the run folder is a copy without export/, so it is served from its checkpoint."""
    root = tmp_path_factory.mktemp("forms")
    run = root / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "eval-*"))
    assert main(["export", str(run), "--out", str(root / "st")]) == 0
    assert main(["export", str(run), "--format", "onnx", "--out", str(root / "onnx")]) == 0
    return {
        "run folder": run,
        "export folder": root / "st",
        "safetensors file": root / "st" / "model.safetensors",
        "onnx file": root / "onnx" / "model.onnx",
        "checkpoint file": run / "checkpoints" / "best.ckpt",
    }


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "ct.png"
    Image.fromarray(synthetic_ct(np.random.default_rng(3), True)).save(path)
    return path


@pytest.mark.parametrize("form", ["run folder", "export folder", "safetensors file", "onnx file", "checkpoint file"])
def test_predict_every_form(forms, ct_file, form, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(forms[form]), str(ct_file), "--out", str(out)]) == 0
    score = float(next(csv.DictReader(out.read_text().splitlines()))["score"])
    capsys.readouterr()
    assert main(["predict", str(forms["export folder"]), str(ct_file), "--out", str(tmp_path / "ref.csv")]) == 0
    ref = float(next(csv.DictReader((tmp_path / "ref.csv").read_text().splitlines()))["score"])
    assert score == pytest.approx(ref, abs=1e-4)  # every form is the same model


@pytest.mark.parametrize("form", ["run folder", "export folder", "onnx file"])
def test_serve_every_form_through_the_cli(forms, form):
    """`covidct serve FORM --port 0`: the OS picks a free port, uvicorn says which; /health and the card answer."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "covidct", "serve", str(forms[form]), "--port", "0"], stderr=subprocess.PIPE, text=True
    )
    try:
        port, deadline, seen = None, time.time() + 120, []
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port, "".join(seen)[-3000:]
        import threading

        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the log pipe drained
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30).read())
        card = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/model", timeout=30).read())
        assert health["status"] == "ok" and card["architecture"] == "timm:resnet10t" and card["covidct_version"]
    finally:
        proc.terminate()
        proc.wait(30)
