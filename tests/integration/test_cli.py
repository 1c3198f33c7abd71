import json

import pytest

from covidct.cli import build_parser, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "samples", "train", "evaluate", "threshold", "report", "compare", "models"):
        assert cmd in out


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "download"],
        ["data", "info"],
        ["data", "audit"],
        ["samples"],
        ["train"],
        ["evaluate"],
        ["threshold"],
        ["report"],
        ["compare"],
        ["models"],
    ],
)
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: covidct" in capsys.readouterr().out


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_data_folder(tmp_path, capsys):
    assert main(["data", "info", "--data-dir", str(tmp_path / "nope")]) == 2
    assert "nope does not exist" in _error(capsys)


def test_unknown_model(tiny_dataset, tmp_path, capsys):
    code = main(["train", "--data-dir", str(tiny_dataset), "--model", "vgg99", "--out", str(tmp_path / "r")])
    assert code == 2 and "unknown model 'vgg99'" in _error(capsys)


def test_bad_config_value(tiny_dataset, capsys):
    assert main(["train", "--data-dir", str(tiny_dataset), "--epochs", "0"]) == 2
    assert "epochs must be > 0, got 0" in _error(capsys)


def test_weights_for_another_architecture(tiny_dataset, tmp_path, capsys):
    import timm
    import torch

    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "w.pth")
    code = main(["train", "--data-dir", str(tiny_dataset), "--model", "vgg16", "--weights", str(tmp_path / "w.pth")])
    assert code == 2 and "do not fit vgg16" in _error(capsys)


def test_evaluate_run_without_checkpoint(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    assert "has no checkpoint" in _error(capsys)


def test_data_info(tiny_dataset, capsys):
    assert main(["data", "info", "--data-dir", str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "COVID" in out and "formats" in out
    (tiny_dataset / "Images-processed" / "CT_COVID" / "covid_0.png").write_bytes(b"broken")
    assert main(["data", "info", "--data-dir", str(tiny_dataset)]) == 1
    assert "covid_0.png" in capsys.readouterr().out


def test_samples_grid(tiny_dataset, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "s.png"
    assert main(["samples", "--data-dir", str(tiny_dataset), "--n", "3", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.size[0] > img.size[1] > 100  # 2 rows of 3


def test_env_data_dir(tiny_dataset, monkeypatch, capsys):
    monkeypatch.setenv("COVIDCT_DATA_DIR", str(tiny_dataset))
    assert main(["data", "info", "--no-images"]) == 0
    assert str(tiny_dataset) in capsys.readouterr().out


@pytest.mark.slow
def test_train_evaluate_compare_end_to_end(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "train",
        "--data-dir",
        str(tiny_dataset),
        "--model",
        "timm:resnet10t",
        "--no-pretrained",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--num-workers",
        "0",
        "--out",
        "runs",
        "--evaluate",
        "test",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test performance" in out and "accuracy" in out and "sensitivity" in out
    run = next((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics["n"] == 8
    # a failed evaluation (bad data folder) must not damage the saved results
    before = (run / "eval-test" / "metrics.json").read_bytes()
    assert main(["evaluate", str(run), "--data-dir", str(tmp_path / "gone")]) == 2
    assert (run / "eval-test" / "metrics.json").read_bytes() == before
    assert main(["compare", str(run), "--out", "cmp"]) == 0
    assert "timm:resnet10t" in (tmp_path / "cmp.md").read_text()
    assert (tmp_path / "cmp.csv").read_text().startswith("run,model,epochs")


def test_recipe_files_load_and_default_matches_the_shipped_defaults():
    from pathlib import Path

    from covidct.config import TrainConfig

    configs = Path(__file__).resolve().parents[2] / "configs"
    shipped = TrainConfig()
    written = TrainConfig.from_yaml(configs / "default.yaml")
    assert written == shipped  # the file documents the defaults; the two cannot drift apart
    study = TrainConfig.from_yaml(configs / "study.yaml")
    assert (study.model, study.grayscale, study.augment, study.label_smoothing) == ("vgg19_bn", False, "study", 0.0)
    assert (study.epochs, study.monitor, study.operating_point) == (30, "val_acc", "0.5")  # the study's, pinned
    multi = TrainConfig.from_yaml(configs / "multisource.yaml")
    assert multi.sources == ["covid-ct", "sars-cov-2-ct"] and (multi.crop, multi.monitor) == ("lung", "val_auc_mean")
    assert sorted(p.name for p in configs.glob("*.yaml")) == ["default.yaml", "multisource.yaml", "study.yaml"]


def test_log_to_a_file_is_one_line_per_epoch(tiny_dataset, tmp_path):
    """Output that is not a terminal gets no progress-bar redraws (no carriage returns), one line per epoch."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "COVIDCT_NO_PROGRESS"}
    with open(tmp_path / "log", "w") as log:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "covidct",
                "train",
                "--data-dir",
                str(tiny_dataset),
                "--model",
                "timm:resnet10t",
                "--no-pretrained",
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--num-workers",
                "0",
                "--out",
                str(tmp_path / "runs"),
                "--evaluate",
                "test",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            check=True,
            timeout=600,
        )
    text = (tmp_path / "log").read_text()
    assert "\r" not in text
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    assert "test performance" in text


def test_mlflow_missing_is_said_before_training(tiny_dataset, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code = main(
        [
            "train",
            "--data-dir",
            str(tiny_dataset),
            "--model",
            "timm:resnet10t",
            "--no-pretrained",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "runs"),
            "--mlflow",
        ]
    )
    assert code == 2
    assert capsys.readouterr().err.strip().endswith("pip install 'covidct[mlflow]'")
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
