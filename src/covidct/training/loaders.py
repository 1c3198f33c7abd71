"""The training and validation datasets and loaders of a run: seeded draws (balanced over sources when asked), the
decoded-image cache, evaluation loaders in order."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from covidct.config import TrainConfig
from covidct.data import ImageDataset, SeededDraws, SplitData, eval_transform, train_transform
from covidct.models import Preprocessing


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
