"""Knowledge distillation (TrainConfig.teachers): the student learns the teachers' mean score on the same augmented
view beside the labels, and a teacher that reads images otherwise is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from covidct.config import TrainConfig
from covidct.errors import ConfigError
from covidct.inference.load import load_trained
from covidct.training.fit import train
from covidct.training.module import Classifier


def _student(trained_run: Path, tmp_path: Path, **changes) -> TrainConfig:
    import yaml

    teacher = yaml.safe_load((trained_run / "config.yaml").read_text())
    values = {**teacher, "out": str(tmp_path / "runs"), "epochs": 1, "ood": False, "onnx": False}
    return TrainConfig.from_dict({**values, "teachers": [str(trained_run)], "distill_weight": 1.0, **changes})


def test_the_student_learns_the_teachers_mean_on_the_same_batch(trained_run, tmp_path):
    run = train(_student(trained_run, tmp_path), progress=False)
    assert (run / "checkpoints" / "best.ckpt").is_file()
    saved = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["config"]["teachers"] == [str(trained_run)]
    assert load_trained(run).card.training["distilled_from"] == [str(trained_run)]  # the card says so
    teacher = load_trained(trained_run).scoring()
    module = Classifier.__new__(Classifier)
    torch.nn.Module.__init__(module)
    module.teachers = [teacher, teacher]
    x = torch.randn(3, 3, 224, 224)
    want = teacher(x).softmax(1)
    got = module.teacher_probabilities(x)
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(got.sum(1), torch.ones(3))


def test_a_teacher_that_reads_images_otherwise_is_refused_before_the_run_folder(trained_run, tmp_path):
    with pytest.raises(ConfigError, match="reads images otherwise"):
        train(
            _student(trained_run, tmp_path, grayscale=not TrainConfig.from_yaml(trained_run / "config.yaml").grayscale)
        )
    assert not (tmp_path / "runs").exists()


def _folding(root: Path, **changes) -> TrainConfig:
    """A tiny recipe whose network starts from a weight file (so that it gets an ImageNet probe), probe folded."""
    from tests.conftest import TINY_COUNTS, make_covidct_layout, starting_weights

    weights = starting_weights(root / "start.safetensors")
    values = dict(
        model="timm:resnet10t",
        data_dir=str(make_covidct_layout(root / "covid-ct", TINY_COUNTS)),
        pretrained=False,
        weights=str(weights),
        epochs=1,
        batch_size=8,
        num_workers=0,
        out=str(root / "runs"),
        precision="32",
        input_size=64,
        fold_probe=True,
        ood=False,
    )
    return TrainConfig(**{**values, **changes})


def test_fold_probe_trains_the_network_with_its_probe_then_one_network_from_it(tmp_path):
    run = train(_folding(tmp_path, epochs=2, teacher_epochs=1), progress=False, run_dir=tmp_path / "runs" / "folded")
    teacher_dir = tmp_path / "runs" / "folded-teacher"
    teacher, student = load_trained(teacher_dir), load_trained(run)
    trained_epochs = [len(pd.read_csv(folder / "metrics.csv")) for folder in (teacher_dir, run)]
    assert trained_epochs == [1, 2]  # the teacher on its own schedule (teacher_epochs), the student on --epochs
    assert TrainConfig.from_yaml(teacher_dir / "config.yaml").epochs == 1
    assert teacher.probe is not None  # the teacher is the recipe's two-network model
    assert student.probe is None and student.card.imagenet_probe is None  # the model kept: one network per image
    assert student.card.training["distilled_from"] == [str(teacher_dir)]
    saved = TrainConfig.from_yaml(run / "config.yaml")  # resuming the student trains the student alone
    assert (saved.fold_probe, saved.imagenet_probe, saved.teachers) == (False, 0.0, [str(teacher_dir)])
    assert (run / "checkpoints" / "best.onnx").is_file() and not (teacher_dir / "checkpoints" / "best.onnx").exists()
    from covidct.evaluation.evaluate import evaluate_run
    from covidct.reporting.study import study_text

    evaluate_run(run, "test", n_bootstrap=0)
    assert f"one network, distilled on the training images from {teacher_dir}" in study_text(run)
    from covidct.api import report

    html = report(run, split="test").read_text()
    assert f"the scores of {teacher_dir} (knowledge distillation" in html


def test_fold_probe_with_no_probe_to_fold_is_one_run(tmp_path):
    run = train(_folding(tmp_path, weights=None), progress=False, run_dir=tmp_path / "runs" / "plain")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["plain"]
    assert "distilled_from" not in load_trained(run).card.training
    assert TrainConfig.from_yaml(run / "config.yaml").fold_probe  # the settings as given, the log saying why one run


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"teachers": ["elsewhere"]}, "trains its own teacher"),
        ({"devices": 2}, "distributed run"),
    ],
)
def test_fold_probe_refuses_what_it_cannot_do_before_training(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        train(_folding(tmp_path, **changes), progress=False)
    assert not (tmp_path / "runs").exists()


def test_fold_probe_refuses_a_taken_teacher_folder_before_training(tmp_path):
    (tmp_path / "runs" / "x-teacher").mkdir(parents=True)
    with pytest.raises(ConfigError, match="x-teacher exists"):
        train(_folding(tmp_path), progress=False, run_dir=tmp_path / "runs" / "x")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["x-teacher"]


@pytest.mark.parametrize(("epochs", "teacher_epochs", "expected"), [(12, 6, 6), (2, 6, 2), (4, None, 4)])
def test_the_teacher_trains_its_own_epochs_never_more_than_the_student(tmp_path, epochs, teacher_epochs, expected):
    from covidct.training.distill import probe_folding

    config = _folding(tmp_path, epochs=epochs, teacher_epochs=teacher_epochs)
    (teacher, _), (student, _) = probe_folding(config, tmp_path / "runs" / "x")
    assert (teacher.epochs, student.epochs) == (expected, epochs)
