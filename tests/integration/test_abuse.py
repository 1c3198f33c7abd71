"""The abuse suite (benchmarks/abuse.py) against `covidct serve` on loopback: every bomb and bad upload answered
4xx by name, and within issue 39's bounds per request: resident memory grows by at most 600 MB (and stays under
2.5 GB), the temporary folder holds at most 200 MB, nothing is left there afterwards, and /health still answers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "abuse.py"


@pytest.fixture(scope="module")
def abuse():
    spec = importlib.util.spec_from_file_location("abuse", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["abuse"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_every_bomb_is_refused_within_the_bounds(abuse, exported_model, tmp_path):
    (tmp_path / "server").mkdir()
    (tmp_path / "work").mkdir()
    proc, server = abuse.start(str(exported_model), tmp_path / "server")
    try:
        rows = abuse.run_suite(server, tmp_path / "work")
        together = abuse.concurrent_uploads(server)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bounds = abuse.BOUNDS
    for row in rows:
        good = row["input"].startswith("good:")
        assert (row["status"] == 200) if good else (400 <= row["status"] < 500), row
        assert good or any(w in row["detail"] for w in ("limit", "minimum", "one request")), row
        assert row["growth_mb"] <= bounds["growth_mb"] and row["peak_rss_mb"] <= bounds["rss_mb"], row
        assert row["disk_mb"] <= bounds["disk_mb"] and row["left"] == [] and row["health"] == 200, row
    assert sum(not r["input"].startswith("good:") for r in rows) == 9  # each bomb of issue 39 was sent
    # six archives at the limit at once: refused by name, or 503 with Retry-After past the bytes in flight (400 MB)
    statuses = [status for status, _, _ in together["answers"]]
    assert all(400 <= s < 500 or s == 503 for s in statuses) and 503 in statuses, together
    assert all(after == "2" for status, _, after in together["answers"] if status == 503), together
    assert together["growth_mb"] <= bounds["inflight_growth_mb"] and together["health"] == 200, together
