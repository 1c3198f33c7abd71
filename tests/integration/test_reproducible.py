"""A seed repeats a training on the same machine whatever the number of loader workers (README, "What training
does"): each draw's augmentation is seeded in the main process, not by the worker that decodes it."""

import csv

from covidct.cli import main
from tests.conftest import TINY_COUNTS, make_covidct_layout

TINY = [
    "--model",
    "timm:resnet10t",
    "--no-pretrained",
    "--no-onnx",  # no test here reads the ONNX graph: 4 of a tiny training's 6 s
    "--batch-size",
    "8",
    "--lr",
    "1e-3",
    "--no-tensorboard",
    "--epochs",
    "2",
    "--augment",
    "ct",
]


def _history(data, out, seed: int, workers: int) -> list[dict[str, str]]:
    assert (
        main(
            [
                "train",
                *TINY,
                "--data-dir",
                str(data),
                "--seed",
                str(seed),
                "--num-workers",
                str(workers),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    run = next(out.iterdir())
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    return [{k: v for k, v in r.items() if k.startswith(("train_loss", "val_"))} for r in rows]


def test_the_same_seed_gives_the_same_training_with_any_worker_count_and_another_seed_does_not(tmp_path):
    data = make_covidct_layout(tmp_path / "data", TINY_COUNTS)
    first = _history(data, tmp_path / "a", seed=3, workers=2)
    again = _history(data, tmp_path / "b", seed=3, workers=0)  # decoded and augmented in the main process
    other = _history(data, tmp_path / "c", seed=4, workers=2)
    assert first == again and len(first) == 2
    assert first != other  # the comparison can fail: the seed does reach the weights and the augmentation
