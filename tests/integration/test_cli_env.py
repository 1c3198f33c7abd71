"""What the command line takes from the environment, run as a user runs it: bare source names found under
$COVIDCT_DATA_ROOT, and the API key of `covidct serve` from $COVIDCT_API_KEY or --api-key."""

import json
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from covidct.cli import main
from tests.conftest import TINY_COUNTS, make_covidct_layout, make_sars_layout


def test_bare_source_names_are_found_under_the_data_root(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data-root"
    make_covidct_layout(root / "covid-ct", TINY_COUNTS)
    make_sars_layout(root / "sars-cov-2-ct", 6, 6)
    monkeypatch.setenv("COVIDCT_DATA_ROOT", str(root))
    monkeypatch.setenv("COVIDCT_ALLOW_PARTIAL_SOURCES", "1")  # tiny stand-ins of the two sources
    assert (
        main(
            [
                "train",
                "--source",
                "covid-ct",
                "--model",
                "timm:resnet10t",
                "--no-pretrained",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--num-workers",
                "0",
                "--precision",
                "32",
                "--no-tensorboard",
                "--run-dir",
                str(tmp_path / "run"),
                "--evaluate-on",
                "sars-cov-2-ct",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert str(root / "covid-ct") in summary["data_source"]
    assert json.loads((tmp_path / "run" / "eval-sars-cov-2-ct" / "metrics.json").read_text())["n"] == 12


def serve(model, *extra, env=None):
    proc = subprocess.Popen(
        [sys.executable, "-m", "covidct", "serve", str(model), "--port", "0", *extra],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    port, deadline = None, time.time() + 60
    while port is None and time.time() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            pytest.fail("server exited")
        m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        port = int(m.group(1)) if m else None
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_serve_requires_the_api_key_given_on_the_command_line_or_in_the_environment(exported_model, how):
    import os

    env = {**os.environ, "COVIDCT_API_KEY": "s3cret"} if how == "environment" else None
    extra = ["--api-key", "s3cret"] if how == "flag" else []
    proc, url = serve(exported_model, *extra, env=env)
    try:
        assert httpx.get(url + "/api/v1/model", timeout=10).status_code == 401
        assert httpx.get(url + "/api/v1/model", headers={"X-API-Key": "wrong"}, timeout=10).status_code == 401
        ok = httpx.get(url + "/api/v1/model", headers={"X-API-Key": "s3cret"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["architecture"] == "timm:resnet10t"
        assert httpx.get(url + "/health", timeout=10).status_code == 200  # health stays open for probes
    finally:
        proc.terminate()
        proc.wait(timeout=20)
