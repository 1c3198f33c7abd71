"""Training with PyTorch Lightning: the LightningModule, the loaders, and `train(config) -> run folder`.

Lightning does the loop, early stopping, checkpointing and mixed precision; this file is the glue.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import random
import re
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import MixUp

from covidct import __version__
from covidct.config import TrainConfig
from covidct.data import ImageDataset, SeededDraws, SplitData, eval_transform, train_transform
from covidct.data.sources import run_data
from covidct.evaluation.metrics import binary_metrics, roc_auc
from covidct.fileio import atomic_write, read_csv, write_csv, write_json, write_text
from covidct.models import Preprocessing, create_model, head_module, head_parameters
from covidct.models.adversarial import DomainHead, reversal_strength
from covidct.training.precision import keep_fp32, resolve_precision

log = logging.getLogger("covidct")


def _quiet_lightning() -> None:
    """Drop Lightning's advertisement for its cloud logger and an internal deprecation warning of its own:
    neither is something a covidct user can act on."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
    # A resumed run writes into its own checkpoint folder, as it should.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty", category=Warning)


_quiet_lightning()


class Classifier(L.LightningModule):
    """A backbone with a 2-class head. Its hyperparameters (saved in every checkpoint) carry the architecture,
    preprocessing, class names and threshold, so a checkpoint is all prediction needs."""

    def __init__(
        self,
        model_name: str,
        preprocessing: dict[str, Any],
        class_names: list[str],
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        warmup_epochs: int = 1,
        max_epochs: int = 30,
        label_smoothing: float = 0.0,
        channels_last: bool = True,
        threshold: float = 0.5,
        backbone_lr_scale: float = 1.0,
        mixup: float = 0.0,
        domain_weight: float = 0.0,
        n_domains: int = 0,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        if model is None:  # rebuilt from a checkpoint: architecture only, the weights follow
            model, _ = create_model(model_name, pretrained=False)
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        # torchvision's batch MixUp: Beta(alpha, alpha) weights, each image mixed with another of the batch, labels
        # mixed the same (as soft targets). With balanced sources many pairs cross sources.
        self.mixup = MixUp(alpha=mixup, num_classes=2) if mixup > 0 else None
        self.domain_head: DomainHead | None = None
        self.train_domains: torch.Tensor | None = None  # the source (0..n_domains-1) of each training image, by index
        if domain_weight > 0 and n_domains > 1:
            head = head_module(self.model)
            if not isinstance(head, nn.Linear):
                from covidct.errors import ConfigError

                raise ConfigError(f"domain_adversarial: {model_name} has no linear head whose input could be read")
            self.domain_head = DomainHead(head.in_features, n_domains)
            self._features: torch.Tensor | None = None
            head.register_forward_pre_hook(self._keep_features)
        self._val_scores: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._val_index: list[torch.Tensor] = []
        self.last_validation: dict[str, np.ndarray] = {}
        self.val_sources: np.ndarray | None = None  # the source of each validation image, by dataset index

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.hparams.preprocessing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    @classmethod
    def for_run(
        cls,
        config: TrainConfig,
        model: nn.Module,
        pre: Preprocessing,
        class_names: list[str] | tuple[str, ...],
        train_ds: ImageDataset,
        val_ds: ImageDataset,
    ) -> Classifier:
        """The module of a training run: the settings it keeps in its checkpoint come from `config` here, once;
        the sources of the training and validation images (by dataset index) for the per-source validation AUC
        and the domain-adversarial head."""
        domains = sorted({s.source for s in train_ds.samples})
        module = cls(
            model_name=config.model,
            preprocessing=pre.to_dict(),
            class_names=list(class_names),
            lr=config.lr,
            weight_decay=config.weight_decay,
            warmup_epochs=config.warmup_epochs,
            max_epochs=config.epochs,
            label_smoothing=config.label_smoothing,
            channels_last=config.channels_last,
            backbone_lr_scale=config.backbone_lr_scale,
            mixup=config.mixup,
            domain_weight=config.domain_adversarial,
            n_domains=len(domains),
            model=model,
        )
        module.val_sources = np.array([s.source for s in val_ds.samples])
        if module.domain_head is not None:
            module.train_domains = torch.as_tensor([domains.index(s.source) for s in train_ds.samples])
            log.info("domain-adversarial head over %d sources (weight %g)", len(domains), config.domain_adversarial)
        elif config.domain_adversarial > 0:
            log.info("domain-adversarial head off: one training source")
        return module

    def _keep_features(self, head: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._features = inputs[0]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        acc = (logits.argmax(1) == labels).float().mean()  # against the unmixed labels: a rough guide only
        n = len(labels)
        self.log("train_acc", acc, on_step=False, on_epoch=True, batch_size=n)
        if self.domain_head is not None and self.train_domains is not None:
            domains = self.train_domains.to(labels.device)[batch["index"]]
            batches = max(1, int(self.trainer.num_training_batches)) if self._trainer is not None else 1
            strength = reversal_strength((self.current_epoch + batch_idx / batches) / self.hparams.max_epochs)
            domain_logits = self.domain_head(self._features, strength)
            domain_loss = F.cross_entropy(domain_logits, domains)
            # Near chance (ln 2 with two sources) means the backbone's features no longer give the source away.
            self.log("train_domain_loss", domain_loss, on_step=False, on_epoch=True, batch_size=n)
            self.log("train_domain_acc", (domain_logits.argmax(1) == domains).float().mean(), on_step=False,
                     on_epoch=True, batch_size=n)  # fmt: skip
            loss = loss + self.hparams.domain_weight * domain_loss
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"]).float()
        loss = F.cross_entropy(logits, batch["label"])
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        self._val_scores.append(logits.softmax(1)[:, 1].detach())
        self._val_labels.append(batch["label"].detach())
        self._val_index.append(torch.as_tensor(batch["index"], device=logits.device))

    def gathered_validation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index, label, score) of every validation image exactly once, across all processes: the distributed
        sampler pads ranks to equal length with repeated images, which are dropped here by dataset index."""
        index, labels, scores = (torch.cat(x) for x in (self._val_index, self._val_labels, self._val_scores))
        for x in (self._val_index, self._val_labels, self._val_scores):
            x.clear()
        if self.trainer.world_size > 1:
            index, labels, scores = (self.all_gather(x).reshape(-1) for x in (index, labels, scores))
        index, labels, scores = (x.cpu().numpy() for x in (index, labels, scores))
        _, first = np.unique(index, return_index=True)
        return index[first], labels[first], scores[first]

    def on_validation_epoch_end(self) -> None:
        index, labels, scores = self.gathered_validation()
        self.last_validation = {"index": index, "label": labels, "score": scores}
        m = binary_metrics(labels, scores, self.hparams.threshold)
        self.log("val_acc", m.accuracy, prog_bar=True)
        # AUC is NaN when a (tiny) validation set holds one class; log 0.5, the chance level, instead.
        self.log("val_auc", m.auc if not math.isnan(m.auc) else 0.5, prog_bar=True)
        self.log("val_auc_mean", self.per_source_auc(index, labels, scores), prog_bar=False)

    def per_source_auc(self, index: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
        """Log each validation source's AUC (val_auc/<source>); return their mean (chance 0.5 where undefined)."""
        if self.val_sources is None or len(set(self.val_sources)) < 2:
            auc = roc_auc(labels, scores) if len(np.unique(labels)) == 2 else 0.5
            return float(auc)
        aucs = []
        for source in sorted(set(self.val_sources)):
            mask = self.val_sources[index] == source
            y, p = labels[mask], scores[mask]
            auc = float(roc_auc(y, p)) if len(np.unique(y)) == 2 else 0.5
            self.log(f"val_auc/{source}", auc)
            aucs.append(auc)
        return float(np.mean(aucs))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the random number generators' states, so a resumed run draws what the uninterrupted one would.
        Stored as tensors and plain numbers: the checkpoint still loads with torch.load(weights_only=True)."""
        checkpoint["covidct_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "covidct_rng" in checkpoint:
            set_rng_state(checkpoint["covidct_rng"])

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        # The new head learns at lr; the pretrained backbone at lr x backbone_lr_scale (1: one learning rate).
        head = {id(p) for p in head_parameters(self.model)}
        groups = [
            {
                "params": [p for p in self.parameters() if id(p) not in head],
                "lr": hp.lr * hp.get("backbone_lr_scale", 1),
            },
            {"params": [p for p in self.parameters() if id(p) in head], "lr": hp.lr},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=hp.weight_decay)

        def factor(epoch: int) -> float:  # linear warm-up, then cosine decay to zero over max_epochs
            if epoch < hp.warmup_epochs:
                return (epoch + 1) / (hp.warmup_epochs + 1)
            progress = (epoch - hp.warmup_epochs) / max(1, hp.max_epochs - hp.warmup_epochs)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU) generator states in types torch.load(weights_only=True) accepts."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }  # fmt: skip


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))


class EpochHistory(Callback):
    """One CSV row per epoch (train and validation metrics, learning rate, seconds), rewritten atomically
    (by rank 0 only when `write` is False elsewhere)."""

    def __init__(self, path: Path, write: bool = True, echo: bool = False) -> None:
        self.path = path
        self.write = write
        self.echo = echo  # one line per epoch on stderr (when there is no progress bar: logs stay readable)
        self.rows: list[dict[str, Any]] = []
        self._start = time.perf_counter()
        self._lr = float("nan")

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._lr = trainer.optimizers[0].param_groups[-1]["lr"]  # the head's; the scheduler steps before epoch end

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {"epoch": trainer.current_epoch + 1}
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc"):
            row[key] = round(metrics.get(key, float("nan")), 6)
        # with several sources: val_auc_mean and each source's val_auc/<source>; domain-adversarial: its loss
        for key in sorted(k for k in metrics if k.startswith(("val_auc_", "val_auc/", "train_domain_"))):
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


def resolve_workers(num_workers: int) -> int:
    return min(2, os.cpu_count() or 1) if num_workers < 0 else num_workers


def build_datasets(config: TrainConfig, data: SplitData, pre: Preprocessing) -> tuple[ImageDataset, ImageDataset]:
    train_tf = train_transform(pre, config.augment)
    val_tf = eval_transform(pre)
    train_cache: Any = config.cache_images
    val_cache: Any = config.cache_images
    if config.cache_dir:
        from covidct.data.cache import DecodedCache

        # Training crops start from the shorter side at `resize`, so shrinking once loses nothing; validation
        # resizes the whole image, so it is kept at full size (its scores stay those a fresh decode gives).
        train_cache = DecodedCache(shorter_side=pre.resize, directory=config.cache_dir)
        val_cache = DecodedCache(directory=config.cache_dir)
    train_ds = ImageDataset(data.splits["train"], train_tf, cache=train_cache)
    val_ds = ImageDataset(data.splits["val"], val_tf, cache=val_cache)
    return train_ds, val_ds


def source_weights(sources: list[str]) -> np.ndarray:
    """Per-image sampling weights under which every source weighs the same per epoch."""
    names, counts = np.unique(sources, return_counts=True)
    per = dict(zip(names, 1.0 / counts))
    return np.array([per[s] for s in sources])


def make_sampler(ds: ImageDataset, config: TrainConfig) -> SeededDraws:
    """The training draws, seeded: a weighted sampler when sources are balanced or an epoch size is set, else a
    shuffle; each draw with the seed of its augmentation (SeededDraws: the same whatever the worker count)."""
    sources = [s.source for s in ds.samples]
    balance = config.source_balance and len(set(sources)) > 1
    if not balance and config.samples_per_epoch is None:
        return SeededDraws.shuffle(ds, config.seed)
    weights = source_weights(sources) if balance else np.ones(len(sources))
    n = config.samples_per_epoch or len(ds)
    generator = torch.Generator()  # seeded by SeededDraws from (seed, epoch)
    draws = torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights), n, replacement=True, generator=generator)
    return SeededDraws(draws, config.seed)


def make_loader(ds: ImageDataset, batch_size: int, num_workers: int, draws: SeededDraws | None = None) -> DataLoader:
    """The training loader (given its draws, make_sampler) or an evaluation one (in order, every image)."""
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=draws,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=draws is not None and len(ds) > batch_size,  # training: no 1-image batch-norm batches
    )


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


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("covidct", "lightning.pytorch"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("covidct").setLevel(logging.INFO)
    return handler


def _detach_log_file(handler: logging.Handler) -> None:
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


class GracefulStop(Callback):
    """Ctrl-C or SIGTERM: Lightning stops the loop; this says what was kept and how to go on."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        last = self.run_dir / "checkpoints" / "last.ckpt"
        if trainer.is_global_zero and last.is_file():
            log.warning("stopped (%s): %s holds the last finished epoch", type(exception).__name__, last)


def train(config: TrainConfig, progress: bool = True, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Train `config.model`, keep the best checkpoint on validation and the last; returns the run folder.

    Everything that can fail on bad input (data, model name, weights, images) is checked before the run folder
    is created, so a failed start leaves nothing behind. resume=True continues `run_dir` from its last.ckpt
    (epoch counter, optimizer, scheduler, early stopping, random generators). With several devices or nodes,
    Lightning's DDP runs one process per device; only rank 0 writes files.
    """
    if resume and run_dir is not None:
        resume_point(Path(run_dir))  # refuse an unreadable last.ckpt before anything is written (train.log included)
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = run_data(config)
    if len(data.class_names) != 2:
        from covidct.errors import DataError

        raise DataError(f"covidct trains binary classifiers; the data has classes {list(data.class_names)}")
    from covidct.training.pretrain import check_accelerator, load_init

    check_accelerator(config.accelerator)
    model, pre = create_model(config.model, config.pretrained and not resume and not config.init, config.weights)
    if config.init and not resume:  # self-supervised CT weights (covidct pretrain) instead of ImageNet
        log.info("backbone from %s", load_init(model, config.model, config.init))
    # stored in the checkpoint with the rest: evaluation and prediction do the same
    pre = dataclasses.replace(pre, grayscale=config.grayscale, crop=config.crop, intensity=config.intensity)
    if config.input_size:  # train crops at input_size from the shorter side resized in the study's 256:224 ratio
        pre = pre.with_input_size(config.input_size)
    train_ds, val_ds = build_datasets(config, data, pre)
    if config.cache_images or config.cache_dir:
        train_ds.preload(progress)
        val_ds.preload(progress)

    rank0 = global_rank() == 0
    shared = os.environ.get(RUN_DIR_ENV)
    run_dir = Path(run_dir) if run_dir else Path(shared) if shared else fresh_run_dir(config.out, config.model)
    if rank0 and not resume:  # a resumed run's folder exists; in a distributed run rank 0 makes it
        run_dir.mkdir(parents=True, exist_ok=shared is not None)
        write_text(run_dir / "config.yaml", config.to_yaml())
    os.environ[RUN_DIR_ENV] = str(run_dir)  # processes Lightning starts for other devices inherit it
    handler = _attach_log_file(run_dir / "train.log") if rank0 else None
    try:
        return _fit(config, data, model, pre, train_ds, val_ds, run_dir, progress, resume, rank0)
    finally:
        if handler:
            _detach_log_file(handler)
        if not shared:
            os.environ.pop(RUN_DIR_ENV, None)


def freeze_blocks(model: nn.Module, n: int) -> int:
    """Freeze the stem and the first n blocks (timm: conv_stem, bn1, blocks; torchvision: features); returns the
    number of frozen parameters. Early blocks hold generic edges and textures; freezing them also saves time."""
    if hasattr(model, "blocks"):
        parts = [getattr(model, k) for k in ("conv_stem", "bn1") if hasattr(model, k)] + list(model.blocks[:n])
    elif hasattr(model, "features"):
        parts = list(model.features[:n])
    else:
        from covidct.errors import ConfigError

        raise ConfigError(f"freeze_blocks: {type(model).__name__} has no blocks or features to freeze")
    count = 0
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(False)
            count += p.numel()
    return count


def resume_point(run_dir: Path) -> tuple[Path, int]:
    """(last.ckpt, epochs it completed) of a run folder, or ConfigError saying why it cannot be resumed."""
    from covidct.errors import ConfigError

    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ConfigError(f"cannot resume {run_dir}: it has no checkpoints/last.ckpt (no epoch finished)")
    try:
        epoch = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception as e:
        from covidct.inference.load import unsafe_message

        raise ConfigError(f"cannot resume {run_dir}: {unsafe_message(last, e)}") from None
    return last, epoch + 1


def _fit(
    config: TrainConfig,
    data: SplitData,
    model: nn.Module,
    pre: Preprocessing,
    train_ds: ImageDataset,
    val_ds: ImageDataset,
    run_dir: Path,
    progress: bool,
    resume: bool,
    rank0: bool,
) -> Path:
    """The run, as named stages: the network's speed and freezing, the Lightning module, the callbacks, the
    trainer, the loop, and (rank 0) the summary."""
    precision = resolve_precision(config.precision, config.accelerator)
    workers = resolve_workers(config.num_workers)
    log.info("run %s: model %s, precision %s, %d loader workers", run_dir, config.model, precision, workers)
    log.info("data: %s %s", data.source, data.counts())
    prepare_network(model, config, precision)
    module = Classifier.for_run(config, model, pre, data.class_names, train_ds, val_ds)
    history = EpochHistory(run_dir / "metrics.csv", write=rank0, echo=not progress)
    ckpt_path = None
    if resume:
        ckpt_path, done = resume_point(run_dir)
        history.rows = [r for r in read_csv(run_dir / "metrics.csv") if int(r["epoch"]) <= done]
        log.info("resuming %s after epoch %d", run_dir, done)
    best, callbacks = run_callbacks(config, run_dir, history, progress)
    trainer = make_trainer(config, precision, callbacks, run_dir, progress)
    start = time.perf_counter()
    try:
        trainer.fit(
            module,
            make_loader(train_ds, config.batch_size, workers, make_sampler(train_ds, config)),
            make_loader(val_ds, config.batch_size, workers),
            ckpt_path=ckpt_path,
        )
    except SystemExit:  # Lightning's way out after Ctrl-C (exit 1) and SIGTERM (SIGTERMException)
        if not trainer.interrupted:
            raise
        from covidct.errors import TrainingInterrupted

        raise TrainingInterrupted(
            f"training stopped by a signal; resume with: covidct train --resume {run_dir}"
        ) from None
    wall = time.perf_counter() - start
    if trainer.is_global_zero:
        write_summary(run_dir, config, data, module, val_ds, best, history, trainer, precision, workers, wall, resume)
        if config.operating_point == "youden":
            store_operating_point(run_dir)
        if config.ood:
            try:
                fit_run_detector(run_dir, train_ds, val_ds)
            except Exception as e:  # the trained model is saved: a detector that cannot be fitted must not lose it
                log.warning("no out-of-distribution detector (%s: %s); fit one later: covidct ood fit %s",
                            type(e).__name__, e, run_dir)  # fmt: skip
    return run_dir


def store_operating_point(run_dir: Path) -> None:
    """The threshold by Youden's J on the validation split (recorded in threshold.json as `covidct threshold`
    does): with label smoothing the scores of this recipe sit off 0.5 (validation at 0.5: sensitivity 0.87,
    specificity 0.67, ACCURACY.md), and the operating point is chosen on validation, never on test."""
    from covidct.errors import DataError
    from covidct.evaluation.evaluate import store_threshold

    try:
        record = store_threshold(run_dir, "youden")
        log.info("operating point: threshold %.4f (Youden's J on validation)", record["threshold"])
    except DataError as e:  # a validation split of one class: the threshold stays 0.5
        log.warning("operating point stays 0.5: %s", e)


def fit_run_detector(run_dir: Path, train_ds: ImageDataset, val_ds: ImageDataset) -> None:
    """The out-of-distribution detector of the best checkpoint (what evaluation and export use), on the images
    training already decoded."""
    from covidct.inference.ood import fit_and_save
    from covidct.runs import RunDir

    fit_and_save(RunDir(run_dir), train_ds, val_ds)


def prepare_network(model: nn.Module, config: TrainConfig, precision: str) -> None:
    """Under bf16 on a CPU, the depthwise convolutions whose bf16 backward is slow stay fp32; frozen early blocks."""
    on_cpu = config.accelerator == "cpu" or (config.accelerator == "auto" and not torch.cuda.is_available())
    if precision == "bf16-mixed" and on_cpu and config.fp32_slow_layers:
        kept = keep_fp32(model)
        log.info("%d depthwise convolutions kept in fp32 (faster than bf16 on this CPU)", len(kept))
    if config.freeze_blocks:
        frozen = freeze_blocks(model, config.freeze_blocks)
        log.info("%d parameters frozen (stem and the first %d blocks)", frozen, config.freeze_blocks)


def run_callbacks(
    config: TrainConfig, run_dir: Path, history: EpochHistory, progress: bool
) -> tuple[ModelCheckpoint, list[Callback]]:
    """(the best-checkpoint callback, every callback of the run): one concern each."""
    # Saved at train epoch end, after EpochHistory wrote the epoch's row (Lightning runs checkpoint callbacks
    # last): a kill in between leaves the row without its checkpoint, and resume redoes that epoch, so the
    # history has no gaps. last.ckpt has its own callback: since Lightning 2.6, save_last=True only writes
    # last.ckpt when a new best was saved (openclimatefix/pvnet#544), which would make it a copy of best.ckpt.
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=config.monitor,
        mode=config.monitor_mode,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # best.ckpt is replaced, never best-v1.ckpt
        save_on_train_epoch_end=True,
        # best.ckpt is for evaluation and export: weights only. Resuming uses last.ckpt, which keeps the optimizer
        # (for vgg19_bn the optimizer state makes a checkpoint 1.7 GB: writing two per epoch dominated GPU epochs).
        save_weights_only=True,
    )
    last = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
        every_n_epochs=config.checkpoint_every,
    )
    callbacks: list[Callback] = [
        best,
        last,
        EarlyStopping(monitor=config.monitor, mode=config.monitor_mode, patience=config.patience),
        history,
        GracefulStop(run_dir),
    ]
    if config.ema_decay > 0:
        # Lightning swaps the averaged weights in for validation and saves them as the checkpoint's state_dict.
        callbacks.append(EMAWeightAveraging(decay=config.ema_decay))
    if progress:
        callbacks.append(TQDMProgressBar(leave=True))
    return best, callbacks


def make_trainer(
    config: TrainConfig, precision: str, callbacks: list[Callback], run_dir: Path, progress: bool
) -> L.Trainer:
    # torchrun/SLURM with one process (WORLD_SIZE=1) also get the DDP strategy: what they were started for
    distributed = (
        config.devices > 1
        or config.num_nodes > 1
        or int(os.environ.get("WORLD_SIZE", "1")) > 1
        or ("WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ)
    )
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy="ddp" if distributed else "auto",
        precision=precision,
        callbacks=callbacks,
        logger=TensorBoardLogger(run_dir, name="tensorboard", version="") if config.tensorboard else False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=False,
        log_every_n_steps=1,  # only epoch metrics are logged; this silences a warning on small data
    )


def write_summary(
    run_dir: Path,
    config: TrainConfig,
    data: SplitData,
    module: Classifier,
    val_ds: ImageDataset,
    best_ckpt: ModelCheckpoint,
    history: EpochHistory,
    trainer: L.Trainer,
    precision: str,
    workers: int,
    wall: float,
    resume: bool,
) -> None:
    """summary.json (what the run was and how it went) and val_last_epoch.csv (the last epoch's scores)."""
    best = Path(best_ckpt.best_model_path)
    best_epoch = (
        int(torch.load(best, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1 if best.is_file() else None
    )
    summary = {
        "model": config.model,
        "monitor": config.monitor,
        "best_epoch": best_epoch,
        "best_score": float(best_ckpt.best_model_score) if best_ckpt.best_model_score is not None else None,
        "epochs_run": len(history.rows),
        "stopped_early": len(history.rows) < config.epochs,
        "wall_time_s": round(wall, 1),
        "resumed": resume,
        "seconds_per_epoch": round(float(np.mean([float(r["seconds"]) for r in history.rows])), 2)
        if history.rows
        else None,
        "precision": precision,
        "initialised_from": config.init or ("ImageNet" if config.pretrained else "random"),
        "loader_workers": workers,
        "processes": trainer.world_size,
        "data_source": data.source,
        "counts": data.counts(),
        "sources": data.source_counts(),
        "source_balance": config.source_balance and len(data.sources()) > 1,
        "notes": list(data.notes),
        "environment": environment(),
    }
    write_json(run_dir / "summary.json", summary)
    if module.last_validation:
        v = module.last_validation
        rows = [
            {"index": int(i), "path": str(val_ds.samples[int(i)].path), "label": int(y), "score": float(p)}
            for i, y, p in zip(v["index"], v["label"], v["score"])
        ]
        write_csv(run_dir / "val_last_epoch.csv", rows)  # every validation image once, as the last epoch scored it
    log.info(
        "best epoch %s (%s = %s), %d epochs in %.0f s",
        best_epoch,
        config.monitor,
        summary["best_score"],
        len(history.rows),
        wall,
    )
