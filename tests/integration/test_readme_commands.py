"""The README's commands and flags, each run once through the real command line (parse, run, read what it wrote):
the ones no other test runs end to end. Tiny synthetic data; the session's trained run is copied before any
command writes into it."""

import csv
import json
from pathlib import Path

import pytest
import yaml

import covidct
from covidct.cli import main
from covidct.evaluation.metrics import threshold_for_sensitivity
from tests.conftest import perturbed_copy

TINY = ["--no-pretrained", "--batch-size", "8", "--num-workers", "0"]


def _val_scores(eval_dir: Path) -> tuple[list[int], list[float]]:
    rows = list(csv.DictReader((eval_dir / "val_predictions.csv").open()))
    return [int(r["label"]) for r in rows], [float(r["score"]) for r in rows]


def test_version_and_models(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"covidct {covidct.__version__}"
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("efficientnet_lite0", "vgg19_bn", "vgg16"))


def test_train_from_a_recipe_file_flags_win_and_report(tiny_dataset, tmp_path, monkeypatch):
    """README: `covidct train --config configs/study.yaml`, flags overriding it; --no-* flags; --report."""
    recipe = Path(__file__).resolve().parents[2] / "configs" / "study.yaml"
    monkeypatch.chdir(tmp_path)
    args = [
        "train",
        "--config",
        str(recipe),
        "--model",
        "timm:resnet10t",
        "--lr",
        "0.002",
        "--epochs",
        "1",
        "--data-dir",
        str(tiny_dataset),
        "--no-tensorboard",
        "--out",
        "runs",
        "--evaluate",
        "test",
        "--report",
        *TINY,
    ]
    assert main(args) == 0
    run = next((tmp_path / "runs").iterdir())
    saved = yaml.safe_load((run / "config.yaml").read_text())
    recipe_values = yaml.safe_load(recipe.read_text())
    assert saved["model"] == "timm:resnet10t" and saved["lr"] == 0.002  # the flags win over the file
    for key in ("grayscale", "augment", "label_smoothing"):  # the file wins over the defaults
        assert saved[key] == recipe_values[key], key
    assert saved["pretrained"] is False and saved["tensorboard"] is False  # --no-* flags
    assert not (run / "tensorboard").exists()
    assert (run / "report.html").stat().st_size > 10_000 and (run / "eval-test" / "metrics.json").is_file()


def test_early_stopping_stops(tiny_dataset, tmp_path):
    """--patience N ends the run N epochs after the best one, well before --epochs."""
    args = [
        "train",
        "--model",
        "timm:resnet10t",
        "--data-dir",
        str(tiny_dataset),
        "--epochs",
        "40",
        "--patience",
        "2",
        "--lr",
        "1e-7",
        "--no-tensorboard",
        "--run-dir",
        str(tmp_path / "run"),
        *TINY,
    ]
    assert main(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    epochs = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert summary["epochs_run"] == len(epochs) < 40
    assert summary["epochs_run"] == summary["best_epoch"] + 2  # stopped by patience, not by running out


def test_evaluate_tta_calibrate_and_several_runs(own_run, tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                str(own_run),
                "--split",
                "test",
                "--tta",
                "--calibrate",
                "--bootstrap",
                "0",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert (
        m["tta"] == "mean over the image and its left-right mirror"
        and m["calibration"]["fitted_on"] == "val"
        and m["split"] == "test"
    )
    plain = tmp_path / "plain"
    assert main(["evaluate", str(own_run), "--bootstrap", "0", "--out", str(plain)]) == 0
    tta_scores = [r["score"] for r in csv.DictReader((tmp_path / "e" / "predictions.csv").open())]
    plain_scores = [r["score"] for r in csv.DictReader((plain / "predictions.csv").open())]
    assert tta_scores != plain_scores  # --tta changed the scores
    other = perturbed_copy(own_run, tmp_path / "other")
    assert (
        main(
            [
                "evaluate",
                str(own_run),
                str(other),
                "--split",
                "test",
                "--bootstrap",
                "0",
                "--out",
                str(tmp_path / "ens"),
            ]
        )
        == 0
    )
    ens = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    assert ens["ensemble"]["members"] == 2 and "ensemble of" in capsys.readouterr().out


def test_threshold_choose_sensitivity(own_run, tmp_path):
    assert main(["evaluate", str(own_run), "--split", "val", "--bootstrap", "0", "--out", str(tmp_path / "v")]) == 0
    assert main(["threshold", str(own_run), "--choose", "sensitivity", "--min-sensitivity", "0.75"]) == 0
    stored = json.loads((own_run / "threshold.json").read_text())
    rows = list(csv.DictReader((tmp_path / "v" / "predictions.csv").open()))
    y, s = [int(r["label"]) for r in rows], [float(r["score"]) for r in rows]
    assert stored["threshold"] == pytest.approx(threshold_for_sensitivity(y, s, 0.75), abs=1e-5)
    assert stored["chosen_on"] == "val"
    # and evaluate then applies it
    assert main(["evaluate", str(own_run), "--bootstrap", "0", "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["threshold"] == stored["threshold"]


def test_cv_folds(tiny_dataset, tmp_path):
    args = [
        "cv",
        "--folds",
        "2",
        "--model",
        "timm:resnet10t",
        "--data-dir",
        str(tiny_dataset),
        "--epochs",
        "1",
        "--no-tensorboard",
        "--out",
        str(tmp_path / "runs"),
        *TINY,
    ]
    assert main(args) == 0
    (cv_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((cv_dir / "cv.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [1, 2]
    assert sorted(p.name for p in cv_dir.iterdir() if p.name.startswith("fold-")) == ["fold-1", "fold-2"]


def test_predict_a_dicom_series_folder_with_window_and_threshold(exported_model, tmp_path):
    """README: covidct predict MODEL patient7/ (a DICOM series folder) with --window and --threshold."""
    from tests.data.test_dicom_study import make_study

    cd = make_study(tmp_path / "cd")
    lung_series = cd / "DIR1"

    def run(*flags: str) -> list[dict[str, str]]:
        out = tmp_path / f"p{len(list(tmp_path.glob('p*.csv')))}.csv"
        assert main(["predict", str(exported_model), str(lung_series), "--out", str(out), *flags]) == 0
        return [r for r in csv.DictReader(out.open()) if r["slice"].isdigit()]

    default, soft, forced = run(), run("--window", "40/400"), run("--threshold", "0")
    assert len(default) == len(soft) == len(forced) == 6
    # a soft-tissue window shows the model other pictures, so other scores; --threshold 0 calls every slice COVID
    assert [r["score"] for r in soft] != [r["score"] for r in default]
    assert all(r["label"] == "COVID" and float(r["threshold"]) == 0.0 for r in forced)
    assert [r["score"] for r in forced] == [r["score"] for r in default]
