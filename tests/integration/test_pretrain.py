"""Self-supervised pretraining (lightly) and fine-tuning from it, through the CLI, on a tiny synthetic set."""

import json

import pytest
import torch
from safetensors.torch import load_file

from covidct.cli import main
from tests.conftest import make_covidct_layout

COUNTS = {
    "train": {"COVID": 10, "NonCOVID": 10},
    "val": {"COVID": 3, "NonCOVID": 3},
    "test": {"COVID": 3, "NonCOVID": 3},
}
TINY = ["--model", "timm:resnet10t", "--no-pretrained", "--num-workers", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_covidct_layout(tmp_path_factory.mktemp("pre") / "covid-ct", COUNTS)


@pytest.mark.parametrize("method", ["simclr", "moco", "byol"])
def test_pretrain_then_fine_tune_from_it(data, tmp_path, method, capsys):
    args = [
        "pretrain",
        *TINY,
        "--data-dir",
        str(data),
        "--method",
        method,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--input-size",
        "32",
        "--memory-bank",
        "64",
        "--out",
        str(tmp_path / "pre"),
    ]
    assert main(args) == 0
    run = next((tmp_path / "pre").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["images"] == 20 and summary["splits"] == ["train"] and summary["epochs_run"] == 2
    state = load_file(str(run / "backbone.safetensors"))
    assert "fc.weight" not in state and any(k.startswith("conv1") for k in state)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and "train_loss" in lines[0] and "val_" not in lines[0]  # no val_* nan: none is logged

    train = [
        "train",
        *TINY,
        "--no-onnx",  # the fine-tune's graph is not what this tests
        "--data-dir",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--init",
        str(run),
        "--out",
        str(tmp_path / "ft"),
        "--no-tensorboard",
    ]
    assert main(train) == 0
    ft = next((tmp_path / "ft").iterdir())
    ckpt = torch.load(ft / "checkpoints" / "last.ckpt", weights_only=True)
    assert json.loads((ft / "summary.json").read_text())["initialised_from"] == str(run)
    assert ckpt["state_dict"]["model.conv1.0.weight"].shape == state["conv1.0.weight"].shape
    from covidct.models import create_model
    from covidct.training.pretrain import load_init

    model, _ = create_model("timm:resnet10t", pretrained=False)
    load_init(model, "timm:resnet10t", run)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_pretrain_bad_input(data, tmp_path, capsys):
    assert main(["pretrain", *TINY, "--data-dir", str(data), "--batch-size", "64", "--out", str(tmp_path)]) == 2
    assert "20 images < --batch-size 64" in capsys.readouterr().err
    assert main(["train", *TINY, "--data-dir", str(data), "--init", str(tmp_path / "nope")]) == 2
    assert "no backbone.safetensors there" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert (
            main(["train", *TINY, "--data-dir", str(data), "--accelerator", "gpu", "--out", str(tmp_path / "g")]) == 2
        )
        assert "no GPU is visible" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_init_from_another_backbone_is_refused(data, tmp_path, capsys):
    args = [
        "pretrain",
        *TINY,
        "--data-dir",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--input-size",
        "32",
        "--out",
        str(tmp_path / "pre"),
    ]
    assert main(args) == 0
    run = next((tmp_path / "pre").iterdir())
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--model",
                "timm:resnet14t",
                "--no-pretrained",
                "--data-dir",
                str(data),
                "--init",
                str(run),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "pretrained timm:resnet10t, not timm:resnet14t" in capsys.readouterr().err


def test_pretraining_repeats_with_any_worker_count(data, tmp_path):
    """The two views of each image are drawn from (seed, epoch) in the main process, not by the worker."""

    def backbone(workers: str, seed: str = "3") -> dict:
        out = tmp_path / f"w{workers}-s{seed}"
        args = [
            "pretrain",
            "--model",
            "timm:resnet10t",
            "--no-pretrained",
            "--num-workers",
            workers,
            "--data-dir",
            str(data),
            "--method",
            "simclr",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--input-size",
            "32",
            "--seed",
            seed,
            "--precision",
            "32",
            "--out",
            str(out),
        ]
        assert main(args) == 0
        return load_file(str(next(out.iterdir()) / "backbone.safetensors"))

    a, b, other = backbone("0"), backbone("2"), backbone("0", seed="4")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_resumed_pretraining_keeps_only_the_history_its_checkpoint_completed(data, tmp_path):
    """A kill after an epoch's row was written but before its last.ckpt: the resumed run redoes that epoch and its
    history has each epoch once (pretraining once kept the orphan row, as training never did)."""
    import csv

    import yaml

    args = [
        "pretrain",
        *TINY,
        "--data-dir",
        str(data),
        "--method",
        "simclr",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--input-size",
        "32",
        "--out",
        str(tmp_path / "pre"),
    ]
    assert main(args) == 0
    run = next((tmp_path / "pre").iterdir())
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "epochs": 3}, sort_keys=False))
    with open(run / "metrics.csv", "a", newline="") as f:  # epoch 3's row, written before the kill
        f.write(
            "3," + ",".join(["123.0"] * (len((run / "metrics.csv").read_text().splitlines()[0].split(",")) - 1)) + "\n"
        )
    assert main(["pretrain", "--resume", str(run)]) == 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["train_loss"]) != 123.0
