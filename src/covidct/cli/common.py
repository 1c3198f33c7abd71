"""Shared pieces of the command modules: progress on a terminal, the CT window argument."""

from __future__ import annotations

import argparse
import os
import sys

# the slice-score aggregations of inference/predict.py (AGGREGATIONS), named here so that building the parser does
# not import torch; tests/integration/test_prediction.py checks that the two agree
AGGREGATION_NAMES = ("top10_mean", "top25_mean", "mean", "median", "max")
DEFAULT_AGGREGATION = "top10_mean"


def progress() -> bool:
    """Progress bars only on a terminal (a log file gets one line per epoch instead); COVIDCT_NO_PROGRESS=1: none."""
    return not os.environ.get("COVIDCT_NO_PROGRESS") and sys.stderr.isatty()


def data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="dataset folder (default: $COVIDCT_DATA_DIR, else data/covid-ct)")
    p.add_argument("--data-csv", help="a CSV of path,label[,split][,group][,source] instead of a folder")
    p.add_argument(
        "--source", action="append", dest="sources", metavar="SOURCE",
        help="a source name (covidct data sources), NAME=PATH, or a folder/CSV; repeat for several",
    )  # fmt: skip


def window(text: str) -> tuple[float, float]:
    try:
        centre, width = (float(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"window must be CENTRE/WIDTH in HU, e.g. -600/1500; got {text!r}") from None
    if width <= 0:
        raise argparse.ArgumentTypeError(f"window width must be > 0, got {text!r}")
    return centre, width


def require(module: str, extra: str, feature: str) -> None:
    """An optional dependency checked before any work starts: one clear error naming the extra to install."""
    import importlib.util

    from covidct.errors import ConfigError

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{feature} needs the optional package {module}: pip install 'covidct[{extra}]'")
