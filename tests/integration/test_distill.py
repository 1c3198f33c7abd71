"""Knowledge distillation (TrainConfig.teachers): the student learns the teachers' mean score on the same augmented
view beside the labels, and a teacher that reads images otherwise is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

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
