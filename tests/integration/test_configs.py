"""Every recipe in configs/ parses and trains for one tiny epoch on synthetic data, as a user runs it
(`covidct train --config FILE`), with only the model, epoch count and data size overridden: a recipe with a field the
code no longer knows, a value out of range, or a combination that cannot train fails here."""

from pathlib import Path

import pytest
import yaml

from covidct.cli import main
from covidct.config import TrainConfig
from tests.conftest import TINY_COUNTS, make_covidct_layout, make_sars_layout

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
# what the tiny run overrides: everything else comes from the recipe and must be what the run saved
OVERRIDDEN = {
    "model",
    "epochs",
    "pretrained",
    "batch_size",
    "num_workers",
    "samples_per_epoch",
    "tensorboard",
    "data_dir",
    "precision",
}


def test_the_recipes_are_there():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "study.yaml", "multisource.yaml"}


@pytest.mark.parametrize("recipe", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_recipe_trains_one_tiny_epoch(recipe, tmp_path, monkeypatch):
    config = TrainConfig.from_yaml(recipe)  # every field known, every value valid
    root = tmp_path / "data-root"
    make_covidct_layout(root / "covid-ct", TINY_COUNTS)
    make_sars_layout(root / "sars-cov-2-ct", 6, 6)
    monkeypatch.setenv("COVIDCT_DATA_ROOT", str(root))  # bare source names (multisource.yaml) resolve here
    monkeypatch.setenv("COVIDCT_ALLOW_PARTIAL_SOURCES", "1")  # tiny stand-ins of the two sources
    data = [] if config.sources else ["--data-dir", str(root / "covid-ct")]
    args = [
        "train",
        "--config",
        str(recipe),
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
        *data,
        "--run-dir",
        str(tmp_path / "run"),
    ]
    if config.samples_per_epoch:
        args += ["--samples-per-epoch", "16"]
    assert main(args) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    written = yaml.safe_load(recipe.read_text())
    assert {k: saved[k] for k in written if k not in OVERRIDDEN} == {
        k: v for k, v in written.items() if k not in OVERRIDDEN
    }
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 2  # header + the one epoch
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
