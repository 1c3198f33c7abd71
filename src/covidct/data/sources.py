"""Sources: the data sets covidct knows by name, registered with their citation, licence, classes, expected
counts, what groups their images and how to get them; plus the user's own folders and CSVs.

A source is named on the command line as NAME (looked up under the data root), NAME=PATH, or a PATH (a
class-per-folder tree or a CSV of path,label[,split][,group][,source]). Several sources are trained on together;
every sample carries its source and group, and no group straddles splits or folds.

A new source is one function here:

    @register_source("my-set", title=..., citation=..., licence=..., counts={"NonCOVID": n, "COVID": m}, ...)
    def my_set(root: Path, seed: int) -> SplitData: ...
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidct.data.datasets import (
    CLASS_NAMES,
    OFFICIAL_COUNTS,
    SPLITS,
    Sample,
    SplitData,
    class_folder_samples,
    csv_splits,
    folder_splits,
    group_split,
    is_official_layout,
    load_splits,
    read_official_split,
)
from covidct.data.images import IMAGE_SUFFIXES
from covidct.errors import DataError

DATA_ROOT_ENV = "COVIDCT_DATA_ROOT"  # a folder holding sources by name: <root>/covid-ct, <root>/sars-cov-2-ct
DEFAULT_DATA_ROOT = "data"
PARTIAL_TOLERANCE = 0.02  # a source with more than 2% fewer images than expected is reported as partial
_POSITIVE_WORDS = ("covid", "positive", "sars", "pneumonia-covid")


@dataclass(frozen=True)
class SourceInfo:
    name: str
    title: str
    citation: str
    licence: str
    counts: dict[str, int]  # expected images per class (NonCOVID, COVID)
    groups: str  # what groups images, as far as anyone knows
    how_to_get: str
    notes: str
    load: Callable[[Path, int], SplitData] = field(repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("load")
        return d


_SOURCES: dict[str, SourceInfo] = {}


def register_source(name: str, **info: Any) -> Callable[[Callable[[Path, int], SplitData]], Callable]:
    def decorate(fn: Callable[[Path, int], SplitData]) -> Callable[[Path, int], SplitData]:
        _SOURCES[name] = SourceInfo(name=name, load=fn, **info)
        return fn

    return decorate


def known_sources() -> list[SourceInfo]:
    return list(_SOURCES.values())


def source_info(name: str) -> SourceInfo:
    if name not in _SOURCES:
        raise DataError(f"unknown source {name!r}; known sources: {', '.join(_SOURCES)} (or give a folder or a CSV)")
    return _SOURCES[name]


# ---- the registered sources -----------------------------------------------------------------------------------


@register_source(
    "covid-ct",
    title="UCSD COVID-CT (Zhao et al. 2020)",
    citation="Zhao, Zhang, He, Xie, Yang, Xie: COVID-CT-Dataset: a CT scan dataset about COVID-19, arXiv:2003.13865",
    licence="images from medRxiv/bioRxiv/journal papers; for research (see the UCSD-AI4H/COVID-CT repository)",
    counts={"NonCOVID": 397, "COVID": 349},
    groups="source paper (file-name prefix); non-COVID: case number before '%'",
    how_to_get="covidct data download --source covid-ct --dest DIR (the official zips and split files)",
    notes="figures cut from papers, not scanner images; official split train 425 / val 118 / test 203",
)
def _covid_ct(root: Path, seed: int) -> SplitData:
    if not is_official_layout(root):
        raise DataError(f"source covid-ct: {root} is not the COVID-CT layout (Images-processed/ + Data-split/)")
    splits = {}
    for split in SPLITS:
        splits[split] = [dataclasses.replace(s, source="covid-ct") for s in read_official_split(root, split)]
    _check_counts("covid-ct", root, splits, {c: sum(OFFICIAL_COUNTS[s][c] for s in SPLITS) for c in CLASS_NAMES})
    return SplitData(splits, CLASS_NAMES, f"COVID-CT official split {root}")


SARS_NOTE = (
    "sars-cov-2-ct publishes no patient IDs: its splits keep blocks of 20 consecutive file numbers together (about "
    "one patient's slices), but a patient can still straddle two blocks and so two splits (in-source figures are "
    "flattered; held-out-source figures are not)"
)
# The files are numbered roughly in acquisition order: 70% of the same-class near-duplicate pairs the audit finds
# are within 5 numbers of each other. About 60 patients per class over 1,229-1,252 slices is ~21 slices each, so
# blocks of 20 numbers stand in for patients: near-duplicate pairs across the seed-42 splits fall from 862 to 280
# (of 1,998; blocks of 10 / 30 / 40: 502 / 428 / 367; benchmarks/GENERALIZATION.md).
SARS_BLOCK = 20


def sars_file_number(path: Path) -> int | None:
    """134 for 'Covid (134).png'; None when the name has no number."""
    number = re.search(r"\((\d+)\)", path.name)
    return int(number.group(1)) if number else None


def sars_group(path: Path, class_name: str, block: int = SARS_BLOCK) -> str:
    """'COVID:6' for 'Covid (134).png' (numbers 120-139); '' (the file alone) when the name has no number."""
    number = sars_file_number(path)
    return f"{class_name}:{number // block}" if number is not None else ""


@register_source(
    "sars-cov-2-ct",
    title="SARS-CoV-2 CT-scan dataset (Soares et al. 2020)",
    citation="Soares, Angelov, Biaso, Froes Higa, Kanda Abe: SARS-CoV-2 CT-scan dataset: A large dataset of real "
    "patients CT scans for SARS-CoV-2 identification, medRxiv 2020.04.24.20078584",
    licence="CC BY-NC-SA 4.0 (non-commercial; cite the paper)",
    counts={"NonCOVID": 1229, "COVID": 1252},
    groups="none published (about 60 + 60 patients, no IDs): blocks of 20 consecutive file numbers stand in",
    how_to_get="covidct data download --source sars-cov-2-ct --dest DIR (Kaggle API, needs ~/.kaggle/kaggle.json "
    "or KAGGLE_USERNAME/KAGGLE_KEY), or by hand: kaggle datasets download -d plameneduardo/sarscov2-ctscan-dataset",
    notes="real-patient slices from hospitals in Sao Paulo, tightly cropped to the lungs; " + SARS_NOTE,
)
def _sars_cov_2_ct(root: Path, seed: int) -> SplitData:
    folders = {"COVID": ["COVID"], "NonCOVID": ["nonCOVID", "non-COVID"]}
    samples = []
    for label, class_name in enumerate(CLASS_NAMES):
        folder = next((root / f for f in folders[class_name] if (root / f).is_dir()), None)
        if folder is None:
            raise DataError(
                f"source sars-cov-2-ct: {root} has no {' or '.join(folders[class_name])}/ folder; "
                f"get it with: {source_info('sars-cov-2-ct').how_to_get}"
            )
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        # blocks only where a class has enough of them to deal into three splits (a pilot subset: slices alone)
        grouped = len(files) >= 10 * SARS_BLOCK
        samples += [Sample(p, label, "sars-cov-2-ct", sars_group(p, class_name) if grouped else "") for p in files]
    splits = group_split(samples, seed)
    _check_counts("sars-cov-2-ct", root, splits, source_info("sars-cov-2-ct").counts)
    return SplitData(
        splits,
        CLASS_NAMES,
        f"SARS-CoV-2 CT-scan set {root} (seeded 70/15/15 split by blocks of {SARS_BLOCK} file numbers)",
        (SARS_NOTE,),
    )


ALLOW_PARTIAL_ENV = "COVIDCT_ALLOW_PARTIAL_SOURCES"  # 1: a subset of a known source is loaded (tests, pilots)


def _check_counts(name: str, root: Path, splits: dict[str, list[Sample]], expected: dict[str, int]) -> None:
    if os.environ.get(ALLOW_PARTIAL_ENV) == "1":
        return
    found = {c: sum(s.label == i for ss in splits.values() for s in ss) for i, c in enumerate(CLASS_NAMES)}
    short = {c: (found[c], n) for c, n in expected.items() if found[c] < n * (1 - PARTIAL_TOLERANCE)}
    if short:
        detail = ", ".join(f"{c}: {f} of {n}" for c, (f, n) in short.items())
        raise DataError(
            f"source {name} at {root} is partial ({detail} images found); get it again with: "
            f"{source_info(name).how_to_get} (or set {ALLOW_PARTIAL_ENV}=1 to use a subset on purpose)"
        )


# ---- resolving names, folders and CSVs ------------------------------------------------------------------------


def data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def parse_source(spec: str) -> tuple[str, Path | None]:
    """'name', 'name=PATH' or 'PATH' -> (name, path or None)."""
    name, sep, path = spec.partition("=")
    if sep:
        return name.strip(), Path(path.strip())
    if spec in _SOURCES:
        return spec, None
    p = Path(spec)
    if p.exists() or "/" in spec or spec.endswith(".csv"):
        return (p.stem if p.suffix == ".csv" else p.name) or spec, p
    raise DataError(f"unknown source {spec!r}; known sources: {', '.join(_SOURCES)} (or give a folder or a CSV)")


def source_dir(name: str) -> Path:
    """Where a named source lives: $COVIDCT_SOURCE_<NAME>, else <data root>/<name> ($COVIDCT_DATA_ROOT or data/);
    for covid-ct also $COVIDCT_DATA_DIR (the single-source setting)."""
    env = "COVIDCT_SOURCE_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
    if os.environ.get(env):
        return Path(os.environ[env])
    if name == "covid-ct" and os.environ.get("COVIDCT_DATA_DIR") and not os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ["COVIDCT_DATA_DIR"])
    return data_root() / name


def load_source(spec: str, seed: int = 42, single_class_ok: bool = False) -> SplitData:
    """One source's splits, every sample tagged with the source's name; classes mapped to NonCOVID/COVID."""
    name, path = parse_source(spec)
    if name in _SOURCES and (path is None or path.is_dir()):
        root = path or source_dir(name)
        if not root.is_dir():
            info = source_info(name)
            raise DataError(f"source {name}: folder {root} does not exist; get it with: {info.how_to_get}")
        data = _SOURCES[name].load(root, seed)
    else:
        if path is None or not path.exists():
            raise DataError(f"source {spec}: {path} does not exist")
        data = _own(path, seed, single_class_ok)
    tagged = {
        sp: [s if s.source else dataclasses.replace(s, source=name) for s in ss] for sp, ss in data.splits.items()
    }
    return dataclasses.replace(data, splits=tagged)


def _own(path: Path, seed: int, single_class_ok: bool) -> SplitData:
    """A user's folder or CSV, with its labels mapped to non-COVID (0) / COVID (1)."""
    if path.is_dir() and is_official_layout(path):
        return load_splits(path, None, seed)
    if path.is_file():
        data = csv_splits(path, seed)
    elif any(d.is_dir() for d in path.iterdir()):
        data = folder_splits(path, seed) if len(_class_dirs(path)) != 1 else _one_class_folder(path)
    else:
        raise DataError(f"{path} holds no class folders (DIR/<class>/*.png or DIR/<split>/<class>/*) and is no CSV")
    return map_classes(data, str(path), single_class_ok)


def _class_dirs(path: Path) -> list[str]:
    if all((path / s).is_dir() for s in SPLITS):
        return [d.name for d in (path / "train").iterdir() if d.is_dir()]
    return [d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]


def _one_class_folder(path: Path) -> SplitData:
    (name,) = _class_dirs(path)
    samples = class_folder_samples(path, (name,))  # a patient's subfolder is its group, as with two classes
    return SplitData({"train": [], "val": [], "test": samples}, (name,), f"folder {path} (one class: {name})")


def class_label(name: str) -> int | None:
    """0 for a non-COVID class name, 1 for a COVID one, None when the name says neither."""
    low = name.lower()
    if any(w in low for w in ("non", "normal", "negative", "healthy", "control")):
        return 0
    if any(w in low for w in _POSITIVE_WORDS):
        return 1
    return None


def map_classes(data: SplitData, where: str, single_class_ok: bool = False) -> SplitData:
    """Labels of the data's own classes -> covidct's (NonCOVID = 0, COVID = 1)."""
    names = list(data.class_names)
    if len(names) == 2 and (class_label(names[0]) == 0 or class_label(names[1]) == 1):
        mapping = {0: 0, 1: 1}  # class_order already put the negative class first
    else:
        mapping = {i: class_label(n) for i, n in enumerate(names)}
        if len(names) > 2 or None in mapping.values() or (len(names) == 2 and len(set(mapping.values())) != 2):
            raise DataError(
                f"{where}: the class names {names} cannot be mapped to non-COVID / COVID; name them e.g. "
                "COVID and NonCOVID (a negative class contains non/normal/negative/healthy/control)"
            )
    if len(names) == 1 and not single_class_ok:
        raise DataError(f"{where} holds one class only ({names[0]}): it can be evaluated (--on) but not trained on")
    splits = {sp: [dataclasses.replace(s, label=mapping[s.label]) for s in ss] for sp, ss in data.splits.items()}
    return SplitData(splits, CLASS_NAMES, data.source, data.notes, data.seeded)


def load_sources(specs: list[str], seed: int = 42) -> SplitData:
    """Several sources as one SplitData (each sample keeps its source)."""
    if not specs:
        raise DataError("no source given")
    parts = [load_source(s, seed) for s in specs]
    names = [p.splits["train"][0].source if p.splits["train"] else s for p, s in zip(parts, specs)]
    if len(set(names)) != len(names):
        raise DataError(f"a source is named twice: {names}")
    for p, spec in zip(parts, specs):
        for i, c in enumerate(CLASS_NAMES):
            if not any(s.label == i for s in p.splits["train"]):
                raise DataError(f"source {spec} has no {c} images in its training split: it cannot be trained on")
    splits = {sp: [s for p in parts for s in p.splits[sp]] for sp in SPLITS}
    notes = tuple(n for p in parts for n in p.notes)
    seeded = any(p.seeded for p in parts)
    return SplitData(splits, CLASS_NAMES, " + ".join(p.source for p in parts), notes, seeded)


def run_data(config: Any, data_dir: str | Path | None = None) -> SplitData:
    """The splits a run was trained on, from its config: its sources, or (single-source runs) its data folder
    or CSV; `data_dir` overrides the folder of a single-source run. A folder or CSV whose class names do not say
    which class is COVID, or that holds one class only, is refused: label 0 would otherwise be called non-COVID
    whatever it holds (a folder of COVID/ alone scored as all non-COVID; COVID/ + Other/ with the classes inverted)."""
    if getattr(config, "sources", None) and not data_dir:
        return load_sources(list(config.sources), config.seed)
    folder = Path(data_dir or config.data_dir)
    data = load_splits(folder, config.data_csv, config.seed)
    if is_official_layout(folder) and not config.data_csv:
        tagged = {sp: [dataclasses.replace(s, source="covid-ct") for s in ss] for sp, ss in data.splits.items()}
        return dataclasses.replace(data, splits=tagged)
    return checked_labels(data, str(config.data_csv or folder))


def checked_labels(data: SplitData, where: str) -> SplitData:
    """`data` (a user's folder or CSV) when its labels can be trusted: two classes, one of them named non-COVID and
    the other COVID. One class, or names that say neither, are refused by name: label 0 would otherwise be read as
    non-COVID whatever it holds."""
    if len(data.class_names) == 1:
        raise DataError(
            f"data {where} holds one class only ({data.class_names[0]}): a data folder needs a COVID and a non-COVID "
            f"class. To score every image of a one-class folder, use --on {where} (covidct evaluate RUN --on DIR)"
        )
    # map_classes refuses names it cannot map; for two classes that it can map, class_order already put the negative
    # class first, so the labels stand as they are and the data keeps its own class names
    map_classes(data, f"data {where}")
    return data


def external_set(spec: str, seed: int = 42) -> tuple[str, list[Sample]]:
    """A labelled set to evaluate on (--on): all images of a source, folder or CSV, every split. One class allowed."""
    data = load_source(spec, seed, single_class_ok=True)
    name, _ = parse_source(spec)
    samples = [s for sp in SPLITS for s in data.splits[sp]]
    if not samples:
        raise DataError(f"{spec}: no images found (images under DIR/<class>/, or DIR/<class>/<patient>/)")
    print(f"{name}: {read_counts(samples, data.class_names)}", file=sys.stderr)
    return name, samples


def read_counts(samples: list[Sample], class_names: tuple[str, ...] | list[str]) -> str:
    """What was read of a labelled set, per class: patient folders (groups) and images, said before scoring so that
    a site sees at once when folders were missed."""
    parts = []
    for label, name in enumerate(class_names):
        mine = [s for s in samples if s.label == label]
        groups = len({s.group for s in mine if s.group})
        parts.append(
            f"{name} {len(mine)} images in {groups} groups (patient folders)"
            if groups
            else f"{name} {len(mine)} images"
        )
    return "read " + "; ".join(parts)
