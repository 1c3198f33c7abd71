"""`train(config) -> run folder`: classification training as named stages (the data, the network, the run folder,
the module and its callbacks, the loop, what is kept after it). The parts live beside it: module.py (the
LightningModule), callbacks.py (one concern each), loaders.py, engine.py (the trainer every command that trains
builds, the run folder's log and rank handling). Lightning does the loop; this file is the glue.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from covidct.config import TrainConfig
from covidct.data import ImageDataset, SplitData, eval_transform
from covidct.data.sources import run_data
from covidct.errors import ConfigError, DataError, TrainingInterrupted
from covidct.fileio import write_csv
from covidct.inference.imagenet_probe import ImageNetProbe
from covidct.inference.load import attach_probe, load_checkpoint, load_trained
from covidct.inference.loaded import LoadedModel
from covidct.inference.run_detector import fit_and_save
from covidct.models import Preprocessing, create_model, head_module
from covidct.models.head import fit_head, head_inputs, set_linear_head
from covidct.runs import RunDir
from covidct.training.callbacks import EpochHistory, run_callbacks
from covidct.training.distill import probe_folding
from covidct.training.engine import (
    build_trainer,
    check_accelerator,
    environment,
    global_rank,
    resolve_workers,
    resume_point,
    run_folder,
)
from covidct.training.loaders import build_datasets, make_loader, make_sampler
from covidct.training.module import Classifier
from covidct.training.precision import keep_fp32, resolve_precision
from covidct.training.pretrain import load_init

log = logging.getLogger("covidct")


def train(
    config: TrainConfig,
    progress: bool = True,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Train `config.model`, keep the best checkpoint on validation and the last; returns the run folder.
    on_epoch: called with each epoch's row of metrics.csv (a dict) as it is written.

    Everything that can fail on bad input (data, model name, weights, images) is checked before the run folder
    is created, so a failed start leaves nothing behind. resume=True continues `run_dir` from its last.ckpt
    (epoch counter, optimizer, scheduler, early stopping, random generators). With several devices or nodes,
    Lightning's DDP runs one process per device; only rank 0 writes files.
    """
    stages = probe_folding(config, run_dir) if config.fold_probe and not resume else []
    if len(stages) > 1:  # the network with its probe, then one network learning them: the model
        for stage, folder in stages:
            run_path = train(stage, progress, folder, on_epoch=on_epoch)
        return run_path
    if resume and run_dir is not None:
        resume_point(RunDir(Path(run_dir)))  # refuse an unreadable last.ckpt before anything (train.log) is written
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = run_data(config)
    if len(data.class_names) != 2:
        raise DataError(f"covidct trains binary classifiers; the data has classes {list(data.class_names)}")
    check_accelerator(config.accelerator)
    model, pre = build_network(config, resume)
    teachers = load_teachers(config.teachers, pre)
    train_ds, val_ds = build_datasets(config, data, pre)
    if not len(val_ds) and config.monitor != "last":
        raise DataError(
            f"the data ({data.source}) has no validation images to choose the epoch by {config.monitor}: give it a "
            "validation split, or train a fixed schedule whose last epoch is the model (--monitor last)"
        )
    if config.cache_images or config.cache_dir:
        train_ds.preload(progress)
        val_ds.preload(progress)
    with run_folder(run_dir, config.out, config.model, config.to_yaml(), resume) as run:
        history = EpochHistory(run.metrics_path, write=global_rank() == 0, echo=not progress, on_epoch=on_epoch)
        return _fit(config, data, (model, teachers), pre, (train_ds, val_ds), run, history, (progress, resume))


def build_network(config: TrainConfig, resume: bool) -> tuple[nn.Module, Preprocessing]:
    """The network to train and its preprocessing (stored in the checkpoint: evaluation and prediction do the
    same): ImageNet weights, or a pretraining run's backbone (--init), or none when resuming (last.ckpt has them)."""
    model, pre = create_model(config.model, config.pretrained and not resume and not config.init, config.weights)
    if config.init and not resume:  # self-supervised CT weights (covidct pretrain) instead of ImageNet
        log.info("backbone from %s", load_init(model, config.model, config.init))
    pre = dataclasses.replace(pre, grayscale=config.grayscale, crop=config.crop, intensity=config.intensity)
    if config.input_size:  # train crops at input_size from the shorter side resized in the study's 256:224 ratio
        pre = pre.with_input_size(config.input_size)
    return model, pre


@dataclass
class Fitted:
    """What the loop leaves for the summary."""

    module: Classifier
    best: ModelCheckpoint
    history: EpochHistory
    trainer: L.Trainer
    precision: str
    workers: int
    wall: float


def _fit(
    config: TrainConfig,
    data: SplitData,
    networks: tuple[nn.Module, list[nn.Module]],
    pre: Preprocessing,
    datasets: tuple[ImageDataset, ImageDataset],
    run: RunDir,
    history: EpochHistory,
    modes: tuple[bool, bool],
) -> Path:
    """The run, as named stages: the linear probe, the network's speed and freezing, the Lightning module, the
    callbacks, the trainer, the loop, and (rank 0) what is kept after it. `networks`: the one to train and the
    teachers it learns from (none without distillation)."""
    model, teachers = networks
    train_ds, val_ds = datasets
    progress, resume = modes  # a progress bar; resuming the run
    precision = resolve_precision(config.precision, config.accelerator)
    workers = resolve_workers(config.num_workers)
    log.info("run %s: model %s, precision %s, %d loader workers", run.path, config.model, precision, workers)
    log.info("data: %s %s", data.source, data.counts())
    if config.lp_ft and not resume:
        lp_ft_head(model, train_ds.samples, pre)
    prepare_network(model, config, precision)
    module = Classifier.for_run(config, model, pre, data.class_names, val_ds)
    module.teachers = teachers
    ckpt_path = None
    if resume:
        ckpt_path, done = resume_point(run)
        history.restore(run.history(), done)
        log.info("resuming %s after epoch %d", run.path, done)
    best, callbacks = run_callbacks(config, run, history, progress)
    trainer = build_trainer(config, precision, callbacks, run.path, progress, tensorboard=config.tensorboard)
    loaders = (
        make_loader(train_ds, config.batch_size, workers, make_sampler(train_ds, config)),
        make_loader(val_ds, config.batch_size, workers) if len(val_ds) else None,  # none: a fixed schedule
    )
    start = time.perf_counter()
    fit_loop(trainer, module, loaders, ckpt_path, run)
    fitted = Fitted(module, best, history, trainer, precision, workers, time.perf_counter() - start)
    if trainer.is_global_zero:
        finish_run(run, config, data, fitted, resume, (train_ds, val_ds))
    return run.path


def load_teachers(paths: list[str], pre: Preprocessing) -> list[nn.Module]:
    """The scorers (network with its ImageNet probe) of the models a run distils from, frozen. Each must read the
    images as the student does: the same preprocessing, since both see the same batch."""
    teachers = []
    for path in paths:
        teacher = load_trained(path)
        if teacher.module is None:
            raise ConfigError(f"teacher {path} holds no PyTorch weights (an ONNX-only export); give its run folder")
        if teacher.preprocessing.to_dict() != pre.to_dict():
            raise ConfigError(
                f"teacher {path} reads images otherwise than this run ({teacher.preprocessing.to_dict()} vs "
                f"{pre.to_dict()}); distil from models trained with the same input size, grey and crop settings"
            )
        scorer = teacher.scoring().eval()
        for p in scorer.parameters():
            p.requires_grad_(False)
        teachers.append(scorer)
    if teachers:
        log.info("distilling from %d teacher(s): %s", len(teachers), ", ".join(paths))
    return teachers


def fit_loop(
    trainer: L.Trainer, module: Classifier, loaders: tuple[Any, Any], ckpt_path: Path | None, run: RunDir
) -> None:
    """Lightning's loop; a stop by signal becomes TrainingInterrupted saying how to resume."""
    try:
        trainer.fit(module, loaders[0], loaders[1], ckpt_path=ckpt_path)
    except SystemExit:  # Lightning's way out after Ctrl-C (exit 1) and SIGTERM (SIGTERMException)
        if not trainer.interrupted:
            raise
        raise TrainingInterrupted(
            f"training stopped by a signal; resume with: covidct train --resume {run.path}"
        ) from None


def finish_run(
    run: RunDir,
    config: TrainConfig,
    data: SplitData,
    fitted: Fitted,
    resume: bool,
    datasets: tuple[ImageDataset, ImageDataset],
) -> None:
    """After the loop (rank 0): the summary, then the best model's post-training steps, each given the trained
    scorer in memory, in the order their inputs require: the ImageNet probe (it changes the scores), the operating
    point (chosen on those scores), the out-of-distribution detector, the ONNX graph of the scorer (network and
    probe). Each is saved with the run as it is made."""
    train_ds, val_ds = datasets
    write_summary(run, config, data, val_ds, fitted, resume)
    model = load_checkpoint(run.checkpoint("best"), run, operating_point=False)
    attach_probe(model, fit_run_probe(run, config, train_ds) if config.imagenet_probe > 0 else None)
    if not len(val_ds):  # every labelled image trained (--monitor last): nothing is left to choose a threshold on
        log.info(
            "no validation split: the threshold stays 0.5 (choose one on held-out images: covidct threshold %s "
            "--on SET, or --choose a value) and the detector's threshold is set out of fold by group",
            run.path,
        )
    elif config.operating_point != "0.5":
        store_operating_point(run, model, config.operating_point)
    if config.ood:
        try:
            fit_and_save(run, train_ds, val_ds, model=model)
        except Exception as e:  # the trained model is saved: a detector that cannot be fitted must not lose it
            log.warning(
                "no out-of-distribution detector (%s: %s); fit one later: covidct ood fit %s",
                type(e).__name__,
                e,
                run.path,
            )
    if config.onnx:
        write_graph(run, model)
    else:  # a graph of an earlier best checkpoint (a resumed run) would no longer match it
        run.scorer_graph_path.unlink(missing_ok=True)


def write_graph(run: RunDir, model: LoadedModel | None = None) -> None:
    """checkpoints/best.onnx: the best model's scorer as ONNX, which predict and serve run with ONNX Runtime (2x
    faster than PyTorch here). A graph that cannot be written loses nothing: the run scores with PyTorch (and a
    graph of an earlier best checkpoint is removed, which the loader would refuse)."""
    from covidct.inference.export import write_run_graph

    try:
        write_run_graph(run, model)
    except Exception as e:
        run.scorer_graph_path.unlink(missing_ok=True)
        log.warning("no ONNX graph (%s: %s); predict and serve score this run with PyTorch", type(e).__name__, e)


def fit_run_probe(run: RunDir, config: TrainConfig, train_ds: ImageDataset) -> ImageNetProbe | None:
    """The ImageNet probe of the network the run started from (ImageNet, --weights or --init), on the training
    images training already decoded, under the evaluation transform; saved with the run. None when there is none:
    a run from random weights, or a probe that cannot be fitted (the trained model is saved: that must not lose
    it)."""
    from covidct.training.imagenet_probe import fit_probe

    if not config.has_probe:
        log.info("no ImageNet probe: the run started from random weights")
        return None
    try:
        net, pre = build_network(config, resume=False)
        labels = np.array([s.label for s in train_ds.samples])
        probe = fit_probe(
            net,
            pre.input_size,
            train_ds.with_transform(eval_transform(pre)),
            labels,
            config.model,
            config.imagenet_probe,
        )
    except Exception as e:
        log.warning("no ImageNet probe (%s: %s); the fine-tuned network scores alone", type(e).__name__, e)
        return None
    if probe is not None:
        probe.save(run.probe_dir)
    return probe


def freeze_blocks(model: nn.Module, n: int) -> int:
    """Freeze the stem and the first n blocks (timm: conv_stem, bn1, blocks; torchvision: features); returns the
    number of frozen parameters. Early blocks hold generic edges and textures; freezing them also saves time."""
    if hasattr(model, "blocks"):
        parts = [getattr(model, k) for k in ("conv_stem", "bn1") if hasattr(model, k)] + list(model.blocks[:n])
    elif hasattr(model, "features"):
        parts = list(model.features[:n])
    else:
        raise ConfigError(f"freeze_blocks: {type(model).__name__} has no blocks or features to freeze")
    count = 0
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(False)
            count += p.numel()
    return count


def store_operating_point(run: RunDir, model: LoadedModel, rule: str) -> None:
    """The threshold by `rule` (a registered operating-point rule) on the validation split, of the scores of `model`
    as it now scores (with its probe), recorded in threshold.json as `covidct threshold` does: with label smoothing
    the scores of this recipe sit off 0.5 (validation at 0.5: sensitivity 0.87, specificity 0.67, ACCURACY.md), and
    the operating point is chosen on validation, never on test."""
    from covidct.evaluation.thresholds import choose_threshold

    try:
        record = choose_threshold(run, model, rule)
        log.info("operating point: threshold %.4f (%s on validation)", record["threshold"], rule)
    except DataError as e:  # a validation split of one class: the threshold stays 0.5
        log.warning("operating point stays 0.5: %s", e)


def lp_ft_head(model: nn.Module, samples: list[Any], pre: Preprocessing) -> None:
    """LP-FT (Kumar et al., ICLR 2022): fit the new head on the backbone's frozen features of the training images (no
    augmentation) before fine-tuning, so the first epochs do not distort pretrained features to fit a random head."""
    head = head_module(model)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"lp_ft: {type(model).__name__} has no linear head to fit")
    start = time.perf_counter()
    x = head_inputs(model, head, ImageDataset(samples, eval_transform(pre)))
    weights, bias = fit_head(x, np.array([s.label for s in samples]), standardise=False)
    set_linear_head(head, weights, bias)
    log.info("linear probe: head fitted on %d frozen feature vectors in %.1f s", len(x), time.perf_counter() - start)


def prepare_network(model: nn.Module, config: TrainConfig, precision: str) -> None:
    """Under bf16 on a CPU, the depthwise convolutions whose bf16 backward is slow stay fp32; frozen early blocks."""
    on_cpu = config.accelerator == "cpu" or (config.accelerator == "auto" and not torch.cuda.is_available())
    if precision == "bf16-mixed" and on_cpu and config.fp32_slow_layers:
        kept = keep_fp32(model)
        log.info("%d depthwise convolutions kept in fp32 (faster than bf16 on this CPU)", len(kept))
    if config.freeze_blocks:
        frozen = freeze_blocks(model, config.freeze_blocks)
        log.info("%d parameters frozen (stem and the first %d blocks)", frozen, config.freeze_blocks)


def best_epoch(best: ModelCheckpoint) -> int | None:
    path = Path(best.best_model_path)
    return (
        int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1 if path.is_file() else None
    )


def write_summary(
    run: RunDir, config: TrainConfig, data: SplitData, val_ds: ImageDataset, fitted: Fitted, resume: bool
) -> None:
    """summary.json (what the run was and how it went) and val_last_epoch.csv (the last epoch's scores)."""
    rows, best = fitted.history.rows, fitted.best
    summary = {
        "model": config.model,
        "monitor": config.monitor,
        "best_epoch": best_epoch(best),
        "best_score": float(best.best_model_score) if best.best_model_score is not None else None,
        "epochs_run": len(rows),
        "stopped_early": len(rows) < config.epochs,
        "wall_time_s": round(fitted.wall, 1),
        "resumed": resume,
        "seconds_per_epoch": round(float(np.mean([float(r["seconds"]) for r in rows])), 2) if rows else None,
        "precision": fitted.precision,
        "initialised_from": config.init or ("ImageNet" if config.pretrained else "random"),
        # knowledge distillation: the models whose mean score the network learned beside the labels
        "distilled_from": list(config.teachers),
        "loader_workers": fitted.workers,
        "processes": fitted.trainer.world_size,
        "data_source": data.source,
        # where the data was, absolute: later commands find it from any working directory (RunDir.training_folder)
        "data_dir": None if config.sources or config.data_csv else str(Path(config.data_dir).resolve()),
        "counts": data.counts(),
        "sources": data.source_counts(),
        "source_balance": config.source_balance and len(data.sources()) > 1,
        "notes": list(data.notes),
        "environment": environment(),
    }
    run.write_summary(summary)
    if fitted.module.last_validation:
        v = fitted.module.last_validation
        scored = [
            {"index": int(i), "path": str(val_ds.samples[int(i)].path), "label": int(y), "score": float(p)}
            for i, y, p in zip(v["index"], v["label"], v["score"])
        ]
        write_csv(run.val_last_epoch_path, scored)  # every validation image once, as the last epoch scored it
    log.info(
        "best epoch %s (%s = %s), %d epochs in %.0f s",
        summary["best_epoch"],
        config.monitor,
        summary["best_score"],
        len(rows),
        fitted.wall,
    )
