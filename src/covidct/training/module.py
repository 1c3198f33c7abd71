"""The LightningModule of classification training: a backbone with a 2-class head, its steps, the validation
metrics it logs, its optimiser and schedule. Lightning runs the loop (training/engine.py builds the trainer)."""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import MixUp

from covidct.config import TrainConfig
from covidct.data import ImageDataset
from covidct.evaluation.metrics import binary_metrics, roc_auc
from covidct.models import Preprocessing, create_model, head_parameters
from covidct.models.head import score_of


def training_card(config: TrainConfig, pre: Preprocessing, class_names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """What prediction needs of a checkpoint: the architecture, its preprocessing, the class names, the threshold
    (0.5 until one is chosen; threshold.json is the record)."""
    return {
        "model_name": config.model,
        "preprocessing": pre.to_dict(),
        "class_names": list(class_names),
        "threshold": 0.5,
    }


class Classifier(L.LightningModule):
    """A backbone with a 2-class head, built from the run's settings (TrainConfig) and its card (training_card).
    Both are saved in every checkpoint's hyperparameters: the card's keys at the top (what load_trained reads; a
    checkpoint is all prediction needs), the settings under "config"."""

    def __init__(self, config: TrainConfig, card: dict[str, Any], model: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.save_hyperparameters({**card, "config": config.to_dict()})
        if model is None:  # rebuilt from a checkpoint: architecture only, the weights follow
            model, _ = create_model(card["model_name"], pretrained=False)
        self.model = model.to(memory_format=torch.channels_last) if config.channels_last else model
        # torchvision's batch MixUp: Beta(alpha, alpha) weights, each image mixed with another of the batch, labels
        # mixed the same (as soft targets). With balanced sources many pairs cross sources.
        self.mixup = MixUp(alpha=config.mixup, num_classes=2) if config.mixup > 0 else None
        self._val_scores: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._val_index: list[torch.Tensor] = []
        self.last_validation: dict[str, np.ndarray] = {}
        self.val_sources: np.ndarray | None = None  # the source of each validation image, by dataset index
        # Knowledge distillation's teachers (scorers of trained models, frozen): a plain list, so that Lightning
        # neither trains, moves nor saves them with the network.
        self.teachers: list[nn.Module] = []

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.hparams.preprocessing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    @classmethod
    def for_run(
        cls,
        config: TrainConfig,
        model: nn.Module,
        pre: Preprocessing,
        class_names: list[str] | tuple[str, ...],
        val_ds: ImageDataset,
    ) -> Classifier:
        """The module of a training run, with the source of each validation image (by dataset index) for the
        per-source validation AUC."""
        module = cls(config, training_card(config, pre, class_names), model=model)
        module.val_sources = np.array([s.source for s in val_ds.samples])
        return module

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing)
        if self.teachers:  # the teachers see the same augmented (and mixed) view as the student: Beyer et al. 2022
            weight = self.config.distill_weight
            loss = (1 - weight) * loss + weight * F.cross_entropy(logits, self.teacher_probabilities(images))
        acc = (logits.argmax(1) == labels).float().mean()  # against the unmixed labels: a rough guide only
        n = len(labels)
        self.log("train_acc", acc, on_step=False, on_epoch=True, batch_size=n)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    @torch.no_grad()
    def teacher_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The teachers' mean class probabilities of a batch (N x 2): an ensemble's answer, the student's target."""
        probabilities = [teacher.to(images.device)(images).float().softmax(1) for teacher in self.teachers]
        return torch.stack(probabilities).mean(0)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"]).float()
        loss = F.cross_entropy(logits, batch["label"])
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        self._val_scores.append(score_of(logits).detach())
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
        hp = self.config
        # The new head learns at lr; the pretrained backbone at lr x backbone_lr_scale (1: one learning rate).
        head = {id(p) for p in head_parameters(self.model)}
        groups = [
            {"params": [p for p in self.parameters() if id(p) not in head], "lr": hp.lr * hp.backbone_lr_scale},
            {"params": [p for p in self.parameters() if id(p) in head], "lr": hp.lr},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=hp.weight_decay)

        def factor(epoch: int) -> float:  # linear warm-up, then cosine decay to zero over max_epochs
            if epoch < hp.warmup_epochs:
                return (epoch + 1) / (hp.warmup_epochs + 1)
            progress = (epoch - hp.warmup_epochs) / max(1, hp.epochs - hp.warmup_epochs)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU) generator states in types torch.load(weights_only=True) accepts."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
