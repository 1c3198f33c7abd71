"""Choosing sample images per class for a figure (the study's Fig. 3 and 4)."""

from __future__ import annotations

import random

from PIL import Image

from covidct.data.datasets import SplitData
from covidct.data.images import load_rgb


def pick_samples(
    data: SplitData, n: int, seed: int = 0, split: str | None = None
) -> dict[str, list[tuple[str, Image.Image]]]:
    """n random images of each class (COVID first, as the study shows), reproducible for a seed."""
    from covidct.errors import ConfigError

    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if split is not None and split not in data.splits:
        raise ConfigError(f"--split must be one of {list(data.splits)}, got {split!r}")
    pool = data.splits[split] if split else [s for v in data.splits.values() for s in v]
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, Image.Image]]] = {}
    for label in reversed(range(len(data.class_names))):
        candidates = sorted((s for s in pool if s.label == label), key=lambda s: str(s.path))
        chosen = rng.sample(candidates, min(n, len(candidates)))
        out[data.class_names[label]] = [(s.path.name, load_rgb(s.path)) for s in chosen]
    return out
