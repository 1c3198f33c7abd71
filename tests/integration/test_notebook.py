"""examples/quickstart.ipynb runs top to bottom in a fresh kernel (nbclient) on a model trained in seconds and a
folder of images the test makes: load, score, plot, the flags and a heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import synthetic_ct

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(exported_model, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    rng = np.random.default_rng(3)
    scans = tmp_path / "scans"
    scans.mkdir()
    for k in range(8):
        Image.fromarray(synthetic_ct(rng, k % 2 == 0, (64, 56))).save(scans / f"slice{k}.png")
    (scans / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setenv("COVIDCT_MODEL", str(exported_model))
    monkeypatch.setenv("COVIDCT_SCANS", str(scans))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "outputs in git"
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"path": str(tmp_path)}).execute()
    text = "\n".join(
        out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert "scored 8 rows; skipped 1" in text
    assert "cut.png" in text and "shift:" in text and "heat map (56, 64)" in text
