"""The engine every command that trains shares (fit, pretrain, and through fit cv, cross-source and the
adaptation's baselines): the Lightning trainer built in one place, the run's log file, the process's rank, and the
atomic checkpoint writer. Lightning does the loop, early stopping, checkpointing and mixed precision."""

from __future__ import annotations

import logging
import os
import platform
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from covidct import __version__
from covidct.errors import ConfigError
from covidct.fileio import atomic_write
from covidct.inference.load import unsafe_message
from covidct.runs import RunDir

log = logging.getLogger("covidct")


def quiet_lightning() -> None:
    """Drop Lightning's advertisement for its cloud logger and an internal deprecation warning of its own:
    neither is something a covidct user can act on."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
    # A resumed run writes into its own checkpoint folder, as it should.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty", category=Warning)
    # A fixed schedule (--monitor last) on every labelled image has no validation loop, on purpose.
    warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")


quiet_lightning()


def resolve_workers(num_workers: int) -> int:
    return min(2, os.cpu_count() or 1) if num_workers < 0 else num_workers


def fresh_run_dir(out: str | Path, model: str) -> Path:
    """OUT/<time>-<model>, with -2, -3, ... when runs start within the same second."""
    base = Path(out) / run_name(model)
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def run_name(model: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', model)}"


def environment() -> dict[str, Any]:
    import lightning
    import timm
    import torchvision

    return {
        "covidct": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("covidct", "lightning.pytorch"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("covidct").setLevel(logging.INFO)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    for name in ("covidct", "lightning.pytorch"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


RUN_DIR_ENV = "COVIDCT_RUN_DIR"  # set for the other processes of a distributed run: they share rank 0's folder


def global_rank() -> int:
    """This process's rank as launchers set it (torchrun: RANK; SLURM: SLURM_PROCID; Lightning's own launcher
    sets LOCAL_RANK/NODE_RANK for the processes it starts), before any process group exists."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    local, node = int(os.environ.get("LOCAL_RANK", 0) or 0), int(os.environ.get("NODE_RANK", 0) or 0)
    return local + node  # only used as "is this rank 0"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, fsynced, then renamed over the old one: a process killed at any
    moment leaves either the previous checkpoint or the new one, never a truncated file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def is_distributed(devices: int, num_nodes: int = 1) -> bool:
    """Several devices or nodes, or started by torchrun/SLURM (also with one process, WORLD_SIZE=1: what they were
    started for)."""
    return (
        devices > 1
        or num_nodes > 1
        or int(os.environ.get("WORLD_SIZE", "1")) > 1
        or ("WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ)
    )


def build_trainer(
    config: Any, precision: str, callbacks: list[Callback], run_dir: Path, progress: bool, tensorboard: bool = False
) -> L.Trainer:
    """The Lightning trainer of every command that trains. `config` gives epochs, accelerator, devices and (where
    it has them) num_nodes: TrainConfig and PretrainConfig both do."""
    num_nodes = getattr(config, "num_nodes", 1)
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=num_nodes,
        strategy="ddp" if is_distributed(config.devices, num_nodes) else "auto",
        precision=precision,
        callbacks=callbacks,
        logger=TensorBoardLogger(run_dir, name="tensorboard", version="") if tensorboard else False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=False,
        log_every_n_steps=1,  # only epoch metrics are logged; this silences a warning on small data
    )


def check_accelerator(accelerator: str) -> None:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--accelerator {accelerator}: no GPU is visible here (torch.cuda.is_available() is False)")


def resume_point(run: RunDir | Path) -> tuple[Path, int]:
    """(last.ckpt, epochs it completed) of a run folder, or ConfigError saying why it cannot be resumed."""
    run = run if isinstance(run, RunDir) else RunDir(Path(run))
    last = run.checkpoint_path("last")
    if not last.is_file():
        raise ConfigError(f"cannot resume {run.path}: it has no checkpoints/last.ckpt (no epoch finished)")
    try:
        epoch = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception as e:
        raise ConfigError(f"cannot resume {run.path}: {unsafe_message(last, e)}") from None
    return last, epoch + 1


@contextmanager
def run_folder(run_dir: Path | None, out: str | Path, name: str, config_text: str, resume: bool) -> Iterator[RunDir]:
    """The run folder of a training process, its train.log attached for the duration: the one given, the one rank 0
    made (a distributed run's other processes find it in $COVIDCT_RUN_DIR), or a fresh OUT/<time>-<name>. Rank 0
    creates it and writes config.yaml, except when resuming."""
    rank0 = global_rank() == 0
    shared = os.environ.get(RUN_DIR_ENV)
    path = Path(run_dir) if run_dir else Path(shared) if shared else fresh_run_dir(out, name)
    run = RunDir(path)
    if rank0 and not resume:
        run.create(config_text, exist_ok=shared is not None)
    os.environ[RUN_DIR_ENV] = str(path)  # processes Lightning starts for other devices inherit it
    handler = attach_log_file(run.log_path) if rank0 else None
    try:
        yield run
    finally:
        if handler:
            detach_log_file(handler)
        if not shared:
            os.environ.pop(RUN_DIR_ENV, None)
