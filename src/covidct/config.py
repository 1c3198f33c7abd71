"""The one typed run configuration, saved as YAML beside every run's outputs."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from covidct.errors import ConfigError

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_DATA_DIR = "data/covid-ct"
MONITORS = {"val_acc": "max", "val_auc": "max", "val_loss": "min"}
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """--data-dir, else $COVIDCT_DATA_DIR, else data/covid-ct."""
    if data_dir:
        return Path(data_dir)
    return Path(os.environ.get("COVIDCT_DATA_DIR") or DEFAULT_DATA_DIR)


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the shipped recipe."""

    model: str = DEFAULT_MODEL
    data_dir: str = DEFAULT_DATA_DIR
    data_csv: str | None = None  # a CSV of path,label[,split] instead of the official layout
    pretrained: bool = True
    weights: str | None = None  # local ImageNet weight file instead of the download/cache
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    backbone_lr_scale: float = 1.0  # the pretrained backbone's lr = lr x this; the new head's = lr
    # The default recipe (chosen on validation, see benchmarks/RESULTS.md): grey images, CT augmentation,
    # label smoothing. --no-grayscale --augment study --label-smoothing 0 gives the study's pipeline.
    label_smoothing: float = 0.1
    grayscale: bool = True  # every image to grey before the model: removes colour mode as a shortcut
    input_size: int | None = None  # side of the square the model sees (default: the backbone's own, e.g. 224)
    augment: str = "ct"  # study: crop + flip; ct: also small affine and brightness/contrast jitter
    patience: int = 10
    ema_decay: float = 0.0  # > 0: validate and checkpoint an exponential moving average of the weights
    monitor: str = "val_acc"  # the study chose the best model on validation accuracy
    seed: int = 42
    precision: str = "auto"  # auto: bf16-mixed on CPUs with AMX/AVX512-BF16 and on GPUs, else 32
    channels_last: bool = True
    # Under bf16 autocast on CPU, run the depthwise convolutions whose bf16 backward is slow in fp32 (precision.py)
    fp32_slow_layers: bool = True
    num_workers: int = -1  # -1: min(2, cores)
    cache_images: bool = True  # decode every image once, keep it in memory
    cache_dir: str | None = None  # also keep decoded (train: shrunk) images on disk, keyed by content, across runs
    accelerator: str = "auto"
    devices: int = 1  # > 1 or num_nodes > 1: data-parallel with Lightning's DDP (NCCL on GPUs, gloo on CPUs)
    num_nodes: int = 1
    tensorboard: bool = True  # TensorBoard logs in RUN_DIR/tensorboard
    out: str = "runs"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        if not 0 < self.backbone_lr_scale <= 1:
            raise ConfigError(f"backbone_lr_scale must be in (0, 1], got {self.backbone_lr_scale!r}")
        for name in ("devices", "num_nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.input_size is not None and not 32 <= self.input_size <= 1024:
            raise ConfigError(f"input_size must be between 32 and 1024 pixels, got {self.input_size!r}")
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {sorted(MONITORS)}, got {self.monitor!r}")
        if self.augment not in ("study", "ct"):
            raise ConfigError(f"augment must be 'study' or 'ct', got {self.augment!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def monitor_mode(self) -> str:
        return MONITORS[self.monitor]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
        return cls.from_dict(data)
