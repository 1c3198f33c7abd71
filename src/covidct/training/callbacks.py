"""The callbacks of a training run, one concern each: the best and last checkpoints, early stopping, the epoch
history (metrics.csv), a graceful stop, the weight average, the progress bar."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    TQDMProgressBar,
)

from covidct.config import TrainConfig
from covidct.fileio import write_csv
from covidct.runs import RunDir

log = logging.getLogger("covidct")


class EpochHistory(Callback):
    """One CSV row per epoch (train and validation metrics, learning rate, seconds), rewritten atomically
    (by rank 0 only when `write` is False elsewhere)."""

    def __init__(
        self, path: Path, write: bool = True, echo: bool = False, on_epoch: Callable[[dict], None] | None = None
    ) -> None:
        self.path = path
        self.on_epoch = on_epoch  # a caller's progress callback (covidct.api.train), given each epoch's row
        self.write = write
        self.echo = echo  # one line per epoch on stderr (when there is no progress bar: logs stay readable)
        self.rows: list[dict[str, Any]] = []
        self._start = time.perf_counter()
        self._lr = float("nan")

    def restore(self, rows: list[dict[str, Any]], done: int) -> None:
        """A resumed run's history: the rows of the epochs its last.ckpt completed (a row written after that
        checkpoint is redone, not kept twice)."""
        self.rows = [r for r in rows if int(r["epoch"]) <= done]

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._lr = trainer.optimizers[0].param_groups[-1]["lr"]  # the head's; the scheduler steps before epoch end

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {"epoch": trainer.current_epoch + 1}
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc"):
            row[key] = round(metrics.get(key, float("nan")), 6)
        # with several sources: val_auc_mean and each source's val_auc/<source>
        for key in sorted(k for k in metrics if k.startswith(("val_auc_", "val_auc/"))):
            row[key] = round(metrics[key], 6)
        row["lr"] = self._lr
        row["seconds"] = round(time.perf_counter() - self._start, 2)
        self.rows.append(row)
        if self.write:
            write_csv(self.path, self.rows)
        log.info("epoch %d: %s", row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
        if self.echo and self.write:
            keys = ("train_loss", "val_loss", "val_acc", "val_auc")  # those the module logs (pretraining: no val_*)
            shown = "  ".join(f"{k} {row[k]:.4f}" for k in keys if k in metrics)
            print(f"epoch {row['epoch']}/{trainer.max_epochs}: {shown}  ({row['seconds']:.0f} s)", file=sys.stderr)
        if self.on_epoch is not None and self.write:
            self.on_epoch(dict(row, epochs=trainer.max_epochs))


class GracefulStop(Callback):
    """Ctrl-C or SIGTERM: Lightning stops the loop; this says what was kept and how to go on."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        last = self.run.checkpoint_path("last")
        if trainer.is_global_zero and last.is_file():
            log.warning("stopped (%s): %s holds the last finished epoch", type(exception).__name__, last)


def last_checkpoint(run: RunDir, every_n_epochs: int = 1) -> ModelCheckpoint:
    """checkpoints/last.ckpt (weights, optimizer, schedule, generators) after every `every_n_epochs` epochs: what
    --resume continues from. Its own callback: since Lightning 2.6, save_last=True only writes last.ckpt when a new
    best was saved (openclimatefix/pvnet#544), which would make it a copy of best.ckpt."""
    return ModelCheckpoint(
        dirpath=run.checkpoints_dir,
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
        every_n_epochs=every_n_epochs,
    )


def best_checkpoint(run: RunDir, config: TrainConfig) -> ModelCheckpoint:
    """checkpoints/best.ckpt, the best epoch by config.monitor (monitor "last": the latest epoch, chosen by nothing):
    weights only, for evaluation and export (resuming uses last.ckpt, which keeps the optimizer; for vgg19_bn that
    state makes a checkpoint 1.7 GB: writing two per epoch dominated GPU epochs)."""
    return ModelCheckpoint(
        dirpath=run.checkpoints_dir,
        filename="best",
        monitor=None if config.monitor == "last" else config.monitor,
        mode=config.monitor_mode,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # best.ckpt is replaced, never best-v1.ckpt
        save_on_train_epoch_end=True,
        save_weights_only=True,
    )


def run_callbacks(
    config: TrainConfig, run: RunDir, history: EpochHistory, progress: bool
) -> tuple[ModelCheckpoint, list[Callback]]:
    """(the best-checkpoint callback, every callback of a training run): one concern each. Checkpoints are saved
    at train epoch end, after EpochHistory wrote the epoch's row (Lightning runs checkpoint callbacks last): a kill
    in between leaves the row without its checkpoint, and resume redoes that epoch, so the history has no gaps."""
    best = best_checkpoint(run, config)
    stop = (
        []
        if config.monitor == "last"
        else [  # a fixed schedule runs every epoch
            EarlyStopping(monitor=config.monitor, mode=config.monitor_mode, patience=config.patience)
        ]
    )
    callbacks: list[Callback] = [best, last_checkpoint(run, config.checkpoint_every), *stop, history, GracefulStop(run)]
    if config.ema_decay > 0:
        # Lightning swaps the averaged weights in for validation and saves them as the checkpoint's state_dict.
        callbacks.append(EMAWeightAveraging(decay=config.ema_decay))
    if progress:
        callbacks.append(TQDMProgressBar(leave=True))
    return best, callbacks
