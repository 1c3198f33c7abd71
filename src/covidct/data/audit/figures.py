"""Figures of data: sample grids (the study's Fig. 3 and 4) and sheets of near-duplicate pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen needed; must come before pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

from covidct.data.images import load_rgb


def sample_grid_figure(images: dict[str, list[tuple[str, Image.Image]]]) -> Figure:
    """One row per class of (name, image) pairs (the study's Fig. 3 and 4)."""
    n_cols = max(len(v) for v in images.values())
    fig, axes = plt.subplots(len(images), n_cols, figsize=(2.6 * n_cols, 2.8 * len(images)), squeeze=False)
    for row, (class_name, items) in enumerate(images.items()):
        for col in range(n_cols):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(items):
                name, img = items[col]
                ax.imshow(img)
                ax.set_title(f"{class_name}\n{name[:28]}", fontsize=7)
    fig.tight_layout()
    return fig


def pair_sheet_figure(pairs: Sequence[dict[str, Any]]) -> Figure:
    """Pairs of images side by side (a, b), captioned with split, class and similarity."""
    fig, axes = plt.subplots(len(pairs), 2, figsize=(5, 2.4 * len(pairs)), squeeze=False)
    for row, p in enumerate(pairs):
        for col, key in enumerate(("a", "b")):
            ax = axes[row][col]
            ax.axis("off")
            try:
                ax.imshow(load_rgb(p[key]))
            except Exception:  # a missing file should not stop the sheet
                ax.text(0.5, 0.5, "unreadable", ha="center")
            side = "split_a" if key == "a" else "split_b"
            cls = "class_a" if key == "a" else "class_b"
            ax.set_title(f"{p[side]} / {p[cls]}\n{Path(p[key]).name[:30]}", fontsize=7)
        sim = f"pHash {p['phash_distance']}, r={p['correlation']}" if "phash_distance" in p else "identical bytes"
        axes[row][0].text(1.05, -0.08, sim, transform=axes[row][0].transAxes, ha="center", fontsize=7, color="crimson")
    fig.tight_layout()
    return fig
