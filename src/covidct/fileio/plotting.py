"""Writing matplotlib figures: `save_figure` is the only writer; figure functions live with their stage."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed; must come before pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from covidct.fileio import atomic_write


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a PNG atomically and free the figure."""
    try:
        return atomic_write(path, lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """A figure as PNG bytes (for embedding), freeing it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=dpi, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()
