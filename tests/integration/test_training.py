import csv
import json

import pytest
import torch
import yaml

from covidct.config import TrainConfig
from covidct.errors import ConfigError, DataError, ModelError
from covidct.inference.load import load_checkpoint
from covidct.training.fit import train
from covidct.training.module import Classifier, training_card
from covidct.training.precision import resolve_precision
from tests.conftest import TINY_COUNTS


def test_run_folder_contents(trained_run):
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["model"] == "timm:resnet10t" and config["epochs"] == 2 and config["seed"] == 42
    assert TrainConfig.from_yaml(trained_run / "config.yaml").model == "timm:resnet10t"
    rows = list(csv.DictReader((trained_run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= float(r["val_acc"]) <= 1 and float(r["train_loss"]) > 0 and float(r["lr"]) > 0
    assert (trained_run / "checkpoints" / "best.ckpt").is_file()
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert "epoch 2" in (trained_run / "train.log").read_text()


def test_checkpoint_carries_architecture_preprocessing_classes_threshold(trained_run):
    ckpt = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    hp = ckpt["hyper_parameters"]
    assert hp["model_name"] == "timm:resnet10t"
    assert hp["class_names"] == ["NonCOVID", "COVID"] and hp["threshold"] == 0.5
    assert set(hp["preprocessing"]) == {"mean", "std", "input_size", "resize", "grayscale", "crop", "intensity"}
    assert hp["preprocessing"]["grayscale"] is True  # the default recipe
    assert hp["config"]["model"] == "timm:resnet10t" and hp["config"]["epochs"] == 2  # the run's settings too
    module = load_checkpoint(trained_run / "checkpoints" / "best.ckpt")
    assert module.preprocessing.input_size == hp["preprocessing"]["input_size"]
    # the best checkpoint is the epoch with the best validation accuracy (first of ties)
    rows = list(csv.DictReader((trained_run / "metrics.csv").open()))
    accs = [float(r["val_acc"]) for r in rows]
    assert ckpt["epoch"] + 1 == 1 + accs.index(max(accs))


def test_bad_inputs_leave_no_run_folder(tmp_path, tiny_dataset):
    out = tmp_path / "runs"
    with pytest.raises(DataError, match="does not exist"):
        train(TrainConfig(data_dir=str(tmp_path / "missing"), out=str(out), pretrained=False))
    with pytest.raises(ModelError, match="unknown model"):
        train(TrainConfig(model="alexnet9", data_dir=str(tiny_dataset), out=str(out)))
    (tiny_dataset / "Images-processed" / "CT_COVID" / "covid_1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"covid_1\.png cannot be read"):
        train(TrainConfig(model="timm:resnet10t", data_dir=str(tiny_dataset), out=str(out), pretrained=False))
    assert not out.exists()


def test_config_validation_quotes_the_bad_value():
    with pytest.raises(ConfigError, match=r"epochs must be > 0, got -1"):
        TrainConfig(epochs=-1)
    with pytest.raises(ConfigError, match=r"monitor must be one of .* got 'val_f1'"):
        TrainConfig(monitor="val_f1")
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['lr_max'\]"):
        TrainConfig.from_dict({"lr_max": 1})


def test_precision_resolution(monkeypatch):
    import covidct.training.precision as precision

    assert resolve_precision("32", "cpu") == "32" and resolve_precision("16-mixed", "gpu") == "16-mixed"
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    for fast, expected in ((True, "bf16-mixed"), (False, "32")):  # CPUs: bf16 only where it pays
        monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert resolve_precision("auto", "cpu") == expected and resolve_precision("auto", "auto") == expected
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    for bf16, expected in ((True, "bf16-mixed"), (False, "16-mixed")):  # GPUs: bf16 where supported, else fp16
        monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert resolve_precision("auto", "gpu") == expected
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "32"  # asked for the CPU: a GPU present changes nothing


@pytest.mark.slow
def test_training_learns_the_synthetic_signal(tmp_path):
    """COVID images carry bright blobs: a few epochs from scratch must beat chance on validation."""
    from tests.conftest import make_covidct_layout

    counts = {
        "train": {"COVID": 24, "NonCOVID": 24},
        "val": {"COVID": 8, "NonCOVID": 8},
        "test": {"COVID": 4, "NonCOVID": 4},
    }
    data = make_covidct_layout(tmp_path / "d", counts, seed=1)
    run = train(
        TrainConfig(
            model="timm:resnet10t",
            data_dir=str(data),
            pretrained=False,
            epochs=6,
            batch_size=8,
            lr=2e-3,
            patience=6,
            num_workers=0,
            out=str(tmp_path / "runs"),
            monitor="val_auc",
            precision="32",
        ),  # the same numbers on every CPU ("auto" is bf16 only where it pays)
        progress=False,
    )
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert max(float(r["val_auc"]) for r in rows) >= 0.8
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_ema_checkpoint_holds_the_averaged_weights(tmp_path, tiny_dataset):
    run = train(
        TrainConfig(
            model="timm:resnet10t",
            data_dir=str(tiny_dataset),
            pretrained=False,
            epochs=2,
            batch_size=8,
            num_workers=0,
            out=str(tmp_path / "runs"),
            ema_decay=0.9,
        ),
        progress=False,
    )
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    key = "model.fc.weight"
    assert averaged[key].shape == current[key].shape
    assert not torch.equal(averaged[key], current[key])  # the EMA lags the raw weights
    from covidct.evaluation.evaluate import evaluate_run

    assert evaluate_run(run, "val")["n"] == 8


def test_backbone_learns_at_a_scaled_rate():
    from covidct.models import create_model, head_parameters

    model, pre = create_model("timm:resnet10t", pretrained=False)
    config = TrainConfig(model="timm:resnet10t", lr=1e-3, warmup_epochs=0, backbone_lr_scale=0.1)
    module = Classifier(config, training_card(config, pre, ["NonCOVID", "COVID"]), model=model)
    optimizer = module.configure_optimizers()["optimizer"]
    backbone, head = optimizer.param_groups
    assert backbone["lr"] == pytest.approx(1e-4) and head["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in head["params"]} == {id(p) for p in head_parameters(module.model)}
    n_params = len(list(module.parameters()))
    assert len(backbone["params"]) + len(head["params"]) == n_params
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        TrainConfig(backbone_lr_scale=0)


def test_tensorboard_logs_the_epoch_metrics(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"))
    events.Reload()
    assert {"val_acc", "val_auc", "train_loss"} <= set(events.Tags()["scalars"])
    with open(trained_run / "metrics.csv", newline="") as f:
        history = [float(r["val_acc"]) for r in csv.DictReader(f)]
    assert [round(e.value, 5) for e in events.Scalars("val_acc")] == [round(v, 5) for v in history]


def test_input_size_sets_the_preprocessing_the_checkpoint_carries(tmp_path, tiny_dataset):
    from covidct.evaluation.scoring import eval_dataset, load_classifier
    from covidct.runs import RunDir

    config = TrainConfig(
        model="timm:resnet10t",
        data_dir=str(tiny_dataset),
        pretrained=False,
        epochs=1,
        batch_size=8,
        num_workers=0,
        out=str(tmp_path),
        input_size=64,
        tensorboard=False,
    )
    run = train(config, progress=False)
    module = load_classifier(run / "checkpoints" / "best.ckpt")
    assert (module.preprocessing.input_size, module.preprocessing.resize) == (64, 73)
    assert eval_dataset(module, RunDir(run).data().splits["val"])[0]["image"].shape == (3, 64, 64)
    with pytest.raises(ConfigError, match="input_size"):
        TrainConfig(input_size=8)


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    from covidct.training.engine import fresh_run_dir

    first = fresh_run_dir(tmp_path, "timm:resnet10t")
    first.mkdir()
    second = fresh_run_dir(tmp_path, "timm:resnet10t")
    assert second != first and not second.exists()


def _every_labelled_image_trains(data, dest):
    """A data CSV of the tiny layout whose validation images join the training split: no validation split left."""
    from covidct.data.datasets import load_splits

    splits = load_splits(data).splits
    rows = [
        {"path": str(s.path), "label": ("NonCOVID", "COVID")[s.label], "split": "test" if split == "test" else "train"}
        for split, samples in splits.items()
        for s in samples
    ]
    with dest.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return dest, len(splits["train"]) + len(splits["val"])


def test_a_fixed_schedule_trains_on_every_labelled_image_and_keeps_its_last_epoch(tmp_path, tiny_dataset):
    data_csv, n_train = _every_labelled_image_trains(tiny_dataset, tmp_path / "all.csv")
    fixed = dict(model="timm:resnet10t", data_csv=str(data_csv), pretrained=False, epochs=3, batch_size=8)
    run = train(TrainConfig(**fixed, num_workers=0, precision="32", out=str(tmp_path / "runs"), monitor="last"))
    summary = json.loads((run / "summary.json").read_text())
    assert sum(summary["counts"]["train"].values()) == n_train and sum(summary["counts"]["val"].values()) == 0
    assert summary["best_epoch"] == 3 and summary["epochs_run"] == 3 and not summary["stopped_early"]
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)
    # no held-out images to choose an operating point on: none is made up; the detector's threshold is out of fold
    assert not (run / "threshold.json").exists()
    assert load_checkpoint(run / "checkpoints" / "best.ckpt").threshold == 0.5
    detector = json.loads((run / "ood" / "ood.json").read_text())
    assert detector["n_val"] == 0 and detector["threshold_on"].startswith("out of fold by group")
    assert (run / "checkpoints" / "best.onnx").is_file()
    assert "no validation split" in (run / "train.log").read_text()
    from covidct.evaluation.evaluate import evaluate_run

    assert evaluate_run(run, "test")["n"] == sum(TINY_COUNTS["test"].values())  # scored without a val split
    with pytest.raises(DataError, match="its val split holds no images"):
        evaluate_run(run, "val")


def test_an_epoch_choice_without_validation_images_is_refused_before_the_run_folder(tmp_path, tiny_dataset):
    data_csv, _ = _every_labelled_image_trains(tiny_dataset, tmp_path / "all.csv")
    config = TrainConfig(model="timm:resnet10t", data_csv=str(data_csv), pretrained=False, out=str(tmp_path / "runs"))
    with pytest.raises(DataError, match=r"no validation images to choose the epoch by val_auc.*--monitor last"):
        train(config)
    assert not (tmp_path / "runs").exists()
