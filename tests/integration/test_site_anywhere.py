"""A hospital's site folder, built from symbolic links into its archive, evaluates, sets a threshold and adapts from
any working directory (issue 47, item 3): the run's training data is found from --data-dir, $COVIDCT_DATA_DIR or
the absolute path recorded at training, and a failed export leaves no half export behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from covidct.cli import main
from tests.conftest import synthetic_ct


def linked_site(root: Path, patients: int = 10, slices: int = 3) -> Path:
    rng = np.random.default_rng(5)
    site = root / "site"
    for i in range(patients):
        label = "COVID" if i % 2 else "NonCOVID"
        folder = root / "archive" / f"patient{i}"
        folder.mkdir(parents=True)
        for k in range(slices):
            Image.fromarray(synthetic_ct(rng, label == "COVID", (56, 48))).save(folder / f"{k}.png")
        (site / label).mkdir(parents=True, exist_ok=True)
        os.symlink(folder, site / label / f"patient{i}")
    return site


@pytest.fixture
def relative_run(own_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The run as if trained from another folder: its config names its data by a path relative to there."""
    config = yaml.safe_load((own_run / "config.yaml").read_text())
    absolute = config["data_dir"]
    config["data_dir"] = "../somewhere/covid-ct"
    (own_run / "config.yaml").write_text(yaml.safe_dump(config))
    summary = json.loads((own_run / "summary.json").read_text())
    assert summary["data_dir"] == str(Path(absolute).resolve())  # what training records
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("COVIDCT_DATA_DIR", raising=False)
    return own_run


def test_a_linked_site_evaluates_sets_a_threshold_and_adapts_from_anywhere(relative_run, tmp_path, capsys):
    site = linked_site(tmp_path)
    assert main(["evaluate", str(relative_run), "--on", f"site={site}", "--bootstrap", "0"]) == 0
    said = capsys.readouterr()
    assert "COVID 15 images in 5 groups" in said.err and "NonCOVID 15 images in 5 groups" in said.err
    assert main(["threshold", str(relative_run), "--choose", "youden", "--on", f"site={site}"]) == 0
    assert json.loads((relative_run / "threshold.json").read_text())["chosen_on"] == "site"
    assert (
        main(
            [
                "adapt",
                str(relative_run),
                "--source",
                f"site={site}",
                "--out",
                str(tmp_path / "adapted"),
                "--no-group-duplicates",
            ]
        )
        == 0
    )


def test_the_data_folder_is_found_from_the_environment_when_nothing_was_recorded(relative_run, monkeypatch):
    summary = json.loads((relative_run / "summary.json").read_text())
    data = summary.pop("data_dir")
    (relative_run / "summary.json").write_text(json.dumps(summary))
    assert main(["threshold", str(relative_run), "--choose", "youden"]) == 2  # relative to elsewhere: not there
    monkeypatch.setenv("COVIDCT_DATA_DIR", data)
    assert main(["threshold", str(relative_run), "--choose", "youden"]) == 0


def test_a_failed_export_leaves_the_folder_as_it_was(relative_run, tmp_path, monkeypatch):
    summary = json.loads((relative_run / "summary.json").read_text())
    summary["data_dir"] = str(tmp_path / "moved-away")  # the data is gone: the ONNX check cannot run
    (relative_run / "summary.json").write_text(json.dumps(summary))
    shutil.rmtree(relative_run / "ood", ignore_errors=True)
    out = tmp_path / "export"
    assert main(["export", str(relative_run), "--out", str(out)]) != 0
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.")]
