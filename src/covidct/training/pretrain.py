"""`covidct pretrain`: self-supervised pretraining of a registered backbone on unlabelled CT images with the
lightly library (its projection heads, losses, momentum updates and view transforms; nothing hand-written), on
Lightning like training. Writes a run folder: config.yaml, metrics.csv, summary.json, checkpoints/last.ckpt (for
--resume) and backbone.safetensors, which `covidct train --init RUN` starts from.

Views for CT (lightly's SimCLR/MoCo-v2 transforms, retuned): random resized crops of 30-100% of the image, horizontal
flips, small rotations, brightness/contrast jitter but no hue or saturation (CT is grey), light blur.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from covidct.config import PretrainConfig
from covidct.data import ImageDataset, SeededDraws
from covidct.data.sources import load_sources
from covidct.errors import DataError, ModelError
from covidct.fileio import atomic_write
from covidct.models import create_model
from covidct.models.registry import HEAD_ATTR
from covidct.runs import RunDir
from covidct.training.callbacks import EpochHistory, last_checkpoint
from covidct.training.engine import (
    build_trainer,
    check_accelerator,
    global_rank,
    resolve_workers,
    resume_point,
    run_folder,
)
from covidct.training.precision import resolve_precision

log = logging.getLogger("covidct")


def feature_extractor(model: nn.Module) -> tuple[nn.Module, int]:
    """The backbone with its classification head replaced by the identity, and the width of its features."""
    path = getattr(model, HEAD_ATTR, None)
    if path:
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        if attr.isdigit():
            parent[int(attr)] = nn.Identity()
        else:
            setattr(parent, attr, nn.Identity())
    elif hasattr(model, "reset_classifier"):
        model.reset_classifier(0)
    with torch.no_grad():
        dim = int(model.eval()(torch.zeros(1, 3, 64, 64)).shape[-1])
    return model.train(), dim


class SelfSupervised(L.LightningModule):
    def __init__(
        self,
        method: str,
        dim: int,
        lr: float,
        weight_decay: float,
        epochs: int,
        temperature: float,
        memory_bank: int,
        backbone: nn.Module,
    ) -> None:
        from lightly.loss import NegativeCosineSimilarity, NTXentLoss
        from lightly.models.modules import heads

        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.method = method
        if method == "simclr":
            self.projection = heads.SimCLRProjectionHead(dim, 512, 128)
            self.criterion = NTXentLoss(temperature=temperature)
        elif method == "moco":
            self.projection = heads.MoCoProjectionHead(dim, 512, 128)
            self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(memory_bank, 128))
        else:
            self.projection = heads.BYOLProjectionHead(dim, 1024, 256)
            self.prediction = heads.BYOLPredictionHead(256, 1024, 256)
            self.criterion = NegativeCosineSimilarity()
        if method in ("moco", "byol"):
            from lightly.models.utils import deactivate_requires_grad

            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_momentum = copy.deepcopy(self.projection)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_momentum)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projection(self.backbone(x).flatten(1))
        return self.prediction(z) if self.method == "byol" else z

    def embed_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_momentum(self.backbone_momentum(x).flatten(1)).detach()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x0, x1 = batch["image"][0], batch["image"][1]
        if self.method == "simclr":
            loss = self.criterion(self.embed(x0), self.embed(x1))
        else:
            from lightly.models.utils import update_momentum
            from lightly.utils.scheduler import cosine_schedule

            m = cosine_schedule(self.current_epoch, max(1, self.hparams.epochs), 0.996, 1.0)
            update_momentum(self.backbone, self.backbone_momentum, m)
            update_momentum(self.projection, self.projection_momentum, m)
            if self.method == "moco":
                loss = self.criterion(self.embed(x0), self.embed_momentum(x1))
            else:
                loss = 0.5 * (
                    self.criterion(self.embed(x0), self.embed_momentum(x1))
                    + self.criterion(self.embed(x1), self.embed_momentum(x0))
                )
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x0))
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.hparams.epochs))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def ct_views(config: PretrainConfig, mean: Any, std: Any) -> Any:
    """lightly's two-view transform, tuned for grey CT (no hue/saturation jitter, small rotations)."""
    from lightly.transforms import MoCoV2Transform, SimCLRTransform
    from torchvision import transforms as T

    cls = SimCLRTransform if config.method == "simclr" else MoCoV2Transform
    views = cls(
        input_size=config.input_size,
        cj_prob=0.8,
        cj_bright=0.4,
        cj_contrast=0.4,
        cj_sat=0.0,
        cj_hue=0.0,
        min_scale=0.3,
        random_gray_scale=0.0,
        gaussian_blur=0.3,
        rr_prob=0.5,
        rr_degrees=10,
        hf_prob=0.5,
        normalize={"mean": list(mean), "std": list(std)},
    )
    front = []
    if config.crop != "none":
        from covidct.data.crop import CropToBody

        front.append(CropToBody(config.crop))
    if config.grayscale:
        front.append(T.Grayscale(3))
    return T.Compose([*front, views]) if front else views


def pretrain_images(config: PretrainConfig) -> list:
    from covidct.data.datasets import load_splits

    data = (
        load_sources(config.sources, config.seed)
        if config.sources
        else load_splits(config.data_dir, config.data_csv, config.seed)
    )
    splits = ["train", "val"] if config.include_val else ["train"]
    return [s for sp in splits for s in data.splits[sp]]  # never the test split


def pretrain(config: PretrainConfig, progress: bool = False, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Pretrain `config.model` self-supervised; returns the run folder (its backbone.safetensors is what
    `covidct train --init RUN` starts from). The same engine, run folder, history and resume as training."""
    check_accelerator(config.accelerator)
    if resume and run_dir is not None:
        resume_point(RunDir(Path(run_dir)))  # refuse an unreadable last.ckpt before anything is written
    L.seed_everything(config.seed, workers=True, verbose=False)
    samples = pretrain_images(config)
    if len(samples) < config.batch_size:
        raise DataError(
            f"pretraining needs at least one batch: {len(samples)} images < --batch-size {config.batch_size}"
        )
    model, pre = create_model(config.model, config.pretrained and not resume)
    backbone, dim = feature_extractor(model)
    module = SelfSupervised(
        config.method,
        dim,
        config.lr,
        config.weight_decay,
        config.epochs,
        config.temperature,
        config.memory_bank,
        backbone,
    )
    ds = ImageDataset(samples, ct_views(config, pre.mean, pre.std), cache=True)
    ds.preload(progress)
    with run_folder(run_dir, config.out, f"pretrain-{config.method}-{config.model}", config.to_yaml(), resume) as run:
        return _pretrain(config, module, ds, run, progress, resume)


def _pretrain(
    config: PretrainConfig, module: SelfSupervised, ds: ImageDataset, run: RunDir, progress: bool, resume: bool
) -> Path:
    workers = resolve_workers(config.num_workers)
    # views drawn per image from (seed, epoch) in the main process: the same with any worker count (SeededDraws)
    draws = SeededDraws.shuffle(ds, config.seed)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=config.batch_size,
        sampler=draws,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    history = EpochHistory(run.metrics_path, write=global_rank() == 0, echo=not progress)
    ckpt = None
    if resume:
        ckpt, done = resume_point(run)
        history.restore(run.history(), done)
    precision = resolve_precision(config.precision, config.accelerator)
    trainer = build_trainer(config, precision, [history, last_checkpoint(run)], run.path, progress)
    start = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=ckpt)
    if trainer.is_global_zero:
        save_backbone(run, module.backbone, config.model)
        run.write_summary(
            {
                "kind": "pretrain",
                "model": config.model,
                "method": config.method,
                "images": len(ds),
                "epochs_run": len(history.rows),
                "wall_time_s": round(time.perf_counter() - start, 1),
                "precision": precision,
                "final_loss": float(history.rows[-1]["train_loss"]) if history.rows else None,
                "sources": config.sources or [config.data_dir],
                "splits": ["train", "val"] if config.include_val else ["train"],
            }
        )
    return run.path


def save_backbone(run: RunDir, backbone: nn.Module, model_name: str) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in backbone.state_dict().items()}
    atomic_write(run.backbone_path, lambda p: save_file(state, str(p), {"model": model_name}))


def load_init(model: nn.Module, model_name: str, init: str | Path) -> str:
    """Load a pretrain run's backbone into `model` (its head stays new); ModelError when it does not fit."""
    from safetensors.torch import load_file

    path = init_weights_path(model_name, init)
    state = load_file(str(path))
    head = head_name(model)
    own = {k: v for k, v in model.state_dict().items() if not (head and k.startswith(head + "."))}
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ModelError(f"--init {init} does not fit {model_name}: {len(missing)} missing, {len(wrong)} mismatched")
    model.load_state_dict({**model.state_dict(), **{k: state[k] for k in own}})
    return str(path)


def init_weights_path(model_name: str, init: str | Path) -> Path:
    """The backbone file of `--init` (a pretrain run folder or the file itself); ModelError when there is none or
    its run pretrained another architecture."""
    given = Path(init)
    run = RunDir(given.parent if given.is_file() else given)
    path = given if given.is_file() else run.backbone_path
    if not path.is_file():
        raise ModelError(f"--init {init}: no {path.name} there; is it a finished `covidct pretrain` run folder?")
    if run.config_path.is_file():
        pre_model = PretrainConfig.from_yaml(run.config_path).model
        if pre_model != model_name:
            raise ModelError(f"--init {init} pretrained {pre_model}, not {model_name}: use --model {pre_model}")
    return path


def head_name(model: nn.Module) -> str:
    """The state-dict prefix of the model's classification head ('' when it has none that can be named)."""
    head = getattr(model, HEAD_ATTR, "") or ""
    if not head and hasattr(model, "get_classifier"):  # timm models: the head's name, found by identity
        classifier = model.get_classifier()
        head = next((name for name, m in model.named_modules() if m is classifier), "")
    return head
