"""The ImageNet probe folded into the network (TrainConfig.fold_probe): the recipe's model, a fine-tuned network with
the frozen starting network's probe (two backbones per image), is trained first as the teacher; then one network,
trained by the same recipe without a probe, learns its scores on the same augmented batches beside the labels
(knowledge distillation: covidct.training.module). The student is the model kept: one backbone per image, and the
detector's features come from its one pass. Measured in benchmarks/ACCURACY.md (issue 48)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from covidct.config import TrainConfig
from covidct.errors import ConfigError
from covidct.training.engine import fresh_run_dir

log = logging.getLogger("covidct")

TEACHER_SUFFIX = "-teacher"


def teacher_folder(run_dir: Path) -> Path:
    """Where a folded run's teacher is trained: beside the run, its name with TEACHER_SUFFIX."""
    return run_dir.with_name(run_dir.name + TEACHER_SUFFIX)


def probe_folding(config: TrainConfig, run_dir: Path | None = None) -> list[tuple[TrainConfig, Path | None]]:
    """The trainings of `config` with its ImageNet probe folded into the network, in order, each an ordinary run (its
    settings and folder); the last is the model. With no probe to fold (a share of 0, a network from random weights)
    it is the one run, its settings as given. Checked before anything is trained (ConfigError). A stop during the
    teacher resumes as `covidct train --resume TEACHER`, then the student is `--teacher TEACHER --imagenet-probe 0`;
    a stop during the student resumes the student."""
    if not config.has_probe:
        log.info("fold_probe: no ImageNet probe to fold (a share of 0 or random starting weights): one run")
        return [(config, run_dir)]
    single = dataclasses.replace(config, fold_probe=False, teacher_epochs=None)
    if config.devices * config.num_nodes > 1:  # each stage would start its own processes, each re-running both
        raise ConfigError(
            "fold_probe runs two trainings one after the other, which a distributed run does not: train the "
            "teacher with --no-fold-probe, then the student with --teacher TEACHER --imagenet-probe 0"
        )
    if config.teachers:
        raise ConfigError(
            "fold_probe trains its own teacher (the network with its ImageNet probe): with --teacher, give "
            "--imagenet-probe 0 (the student scores alone) or --no-fold-probe"
        )
    run_dir = Path(run_dir) if run_dir else fresh_run_dir(config.out, config.model)
    teacher_dir = teacher_folder(run_dir)
    for folder in (run_dir, teacher_dir):
        if folder.exists():
            raise ConfigError(f"{folder} exists: give --run-dir a new folder (the teacher goes to {teacher_dir})")
    log.info(
        "fold_probe: the teacher (the network and its ImageNet probe) in %s, then one network in %s",
        teacher_dir,
        run_dir,
    )
    teacher = dataclasses.replace(  # scored by its student only: no detector, no graph
        single, ood=False, onnx=False, epochs=min(config.teacher_epochs or config.epochs, config.epochs)
    )
    student = dataclasses.replace(single, teachers=[str(teacher_dir)], imagenet_probe=0.0)
    return [(teacher, teacher_dir), (student, run_dir)]
