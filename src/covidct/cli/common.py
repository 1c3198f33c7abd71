"""Shared pieces of the command modules: progress on a terminal, the CT window argument."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any


def progress() -> bool:
    """Progress bars only on a terminal (a log file gets one line per epoch instead); COVIDCT_NO_PROGRESS=1: none."""
    return not os.environ.get("COVIDCT_NO_PROGRESS") and sys.stderr.isatty()


def data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="dataset folder (default: $COVIDCT_DATA_DIR, else data/covid-ct)")
    p.add_argument("--data-csv", help="a CSV of path,label[,split][,group][,source] instead of a folder")
    p.add_argument(
        "--source",
        action="append",
        dest="sources",
        metavar="SOURCE",
        help="a source name (covidct data sources), NAME=PATH, or a folder/CSV; repeat for several",
    )


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


# The argument groups of a settings class's flags (`covidct train --help`), by field name; the rest: "other settings"
SETTING_GROUPS = {
    "data": (
        "data_dir",
        "data_csv",
        "sources",
        "source_balance",
        "samples_per_epoch",
        "grayscale",
        "input_size",
        "augment",
        "crop",
        "intensity",
        "cache_images",
        "cache_dir",
        "num_workers",
        "split",
        "on",
        "tta",
    ),
    "model": (
        "model",
        "pretrained",
        "weights",
        "init",
        "freeze_blocks",
        "lp_ft",
        "imagenet_probe",
        "ema_decay",
        "checkpoint",
    ),
    "schedule": (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_epochs",
        "backbone_lr_scale",
        "label_smoothing",
        "patience",
        "mixup",
        "monitor",
        "seed",
    ),
    "evaluation": ("operating_point", "ood", "threshold", "calibrate", "n_bootstrap", "min_sensitivity"),
    "hardware": ("precision", "channels_last", "fp32_slow_layers", "accelerator", "devices", "num_nodes"),
    "output": ("out", "out_dir", "tensorboard", "checkpoint_every"),
}


def config_args(p: argparse.ArgumentParser, cls: Any = None, config_file: bool = True) -> None:
    """One flag per field of a settings class (TrainConfig unless given; help, choices and flag name from its
    metadata; booleans as --x/--no-x; lists repeated). Every default is None here, so that only flags given on the
    command line override. config_file: also --config, a YAML file of the same settings."""
    from covidct.config import TrainConfig
    from covidct.config.base import field_kind

    cls = cls or TrainConfig
    hints = typing.get_type_hints(cls)
    if config_file:
        p.add_argument("--config", help="a YAML config (e.g. a saved run's config.yaml); flags override it")
    defaults = cls()
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        flag = "--" + (meta.get("flag") or f.name).replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = meta.get("help", "")
        kind = field_kind(hints[f.name])
        title = next((t for t, names in SETTING_GROUPS.items() if f.name in names), "other settings")
        group = groups.get(title) or groups.setdefault(title, p.add_argument_group(title))
        if kind is bool:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {'on' if default else 'off'})",
            )
        elif kind is list:
            group.add_argument(
                flag, dest=f.name, action="append", default=None, metavar=f.name[:-1].upper(), help=help_text
            )
        else:
            shown = "" if default in (None, "") or "default" in help_text else f" (default {default})"
            group.add_argument(
                flag, dest=f.name, type=kind, default=None, choices=meta.get("choices"), help=help_text + shown
            )


def settings_from_args(args: argparse.Namespace, cls: Any, **values: Any) -> Any:
    """A settings object from the flags given on the command line over `values` (a recipe file's, or settings whose
    flags are built by hand); the rest keep the class's defaults."""
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None and f.metadata.get("cli", True):
            values[f.name] = value
    return cls.from_dict(values)


# The input limits (covidct.config.InputLimits) that each command applies: serve's uploads, and what every reader checks
READER_LIMITS = ("pixels", "min_side", "dicom_mb", "series_slices", "volume_mb", "folder_entries")
UPLOAD_LIMITS = (
    "upload_mb",
    "archive_mb",
    "archive_members",
    "member_mb",
    "expanded_mb",
    "member_ratio",
    "inflight_mb",
)


def limit_flag(name: str) -> str:
    """The flag of an input limit: --max-NAME (--min-side for the one lower bound).

    >>> limit_flag("upload_mb"), limit_flag("min_side")
    ('--max-upload-mb', '--min-side')
    """
    return "--min-side" if name == "min_side" else f"--max-{name.replace('_', '-')}"


def limit_args(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """One flag per input limit named (--max-NAME), in a group of their own, with the default from InputLimits."""
    from covidct.config import INPUT_LIMITS, InputLimits

    group = p.add_argument_group(
        "input limits", "refused with a message naming the limit (docs: reference/input-limits)"
    )
    fields = {f.name: f for f in dataclasses.fields(InputLimits)}
    for name in names:
        kind = int if isinstance(getattr(INPUT_LIMITS, name), int) else float
        group.add_argument(
            limit_flag(name),
            dest=f"limit_{name}",
            type=kind,
            default=None,
            metavar="N",
            help=f"{fields[name].metadata['help']} (default {getattr(INPUT_LIMITS, name):g})",
        )


def limits_from_args(args: argparse.Namespace) -> Any:
    """InputLimits from the --max-* flags given, the rest at their defaults; a value <= 0 refused by name."""
    from covidct.config import InputLimits

    given = {
        f.name: getattr(args, f"limit_{f.name}")
        for f in dataclasses.fields(InputLimits)
        if getattr(args, f"limit_{f.name}", None) is not None
    }
    return InputLimits.from_dict(given)
