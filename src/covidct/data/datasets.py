"""Where samples come from (the official COVID-CT layout, class-per-folder trees, a CSV) and the Dataset.

Labels follow the study: non-COVID = 0, COVID = 1 (COVID is the positive class for sensitivity).
"""

from __future__ import annotations

import csv
import logging
import random
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from covidct.data.images import IMAGE_SUFFIXES, is_slice_file, listed_files, load_rgb
from covidct.errors import DataError

log = logging.getLogger("covidct")

CLASS_NAMES = ("NonCOVID", "COVID")
SPLITS = ("train", "val", "test")
OFFICIAL_COUNTS = {
    "train": {"NonCOVID": 234, "COVID": 191},
    "val": {"NonCOVID": 58, "COVID": 60},
    "test": {"NonCOVID": 105, "COVID": 98},
}
# Fractions for users' data that comes without a split column or split folders.
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
_NEGATIVE_WORDS = ("non", "normal", "negative", "healthy", "control")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    source: str = ""  # the source (data set) it came from
    group: str = ""  # what must stay together in one split or fold (patient, paper); "" = the image alone


@dataclass
class SplitData:
    """The samples of each split, the class names (index = label) and where they came from."""

    splits: dict[str, list[Sample]]
    class_names: tuple[str, ...]
    source: str
    notes: tuple[str, ...] = ()  # what a user must know about how the splits were made
    seeded: bool = False  # the splits (or some of them) were drawn at random by seed, not given by the data

    def sources(self) -> list[str]:
        return sorted({s.source for samples in self.splits.values() for s in samples})

    def source_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """{source: {split: {class: n}}}."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for split, samples in self.splits.items():
            for s in samples:
                per = out.setdefault(s.source, {}).setdefault(split, {n: 0 for n in self.class_names})
                per[self.class_names[s.label]] += 1
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            split: {name: sum(s.label == i for s in samples) for i, name in enumerate(self.class_names)}
            for split, samples in self.splits.items()
        }


def official_image_dir(root: Path, class_name: str) -> Path:
    return root / "Images-processed" / f"CT_{class_name}"


def official_split_file(root: Path, class_name: str, split: str) -> Path:
    return root / "Data-split" / class_name / f"{split}CT_{class_name}.txt"


def is_official_layout(root: Path) -> bool:
    return (root / "Images-processed").is_dir() and (root / "Data-split").is_dir()


def read_split_file(path: Path) -> list[str]:
    """File names listed one per line; blank lines and surrounding spaces ignored."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist") from None
    return [line.strip() for line in lines if line.strip()]


def covid_ct_group(name: str) -> str:
    """The paper (or case) a COVID-CT image was cut from, from its file name: COVID files are named
    <paper>-p<page>-<figure>..., non-COVID ones <case>%<n>.<ext>."""
    stem = Path(name).stem
    m = re.search(r"-p\d+", stem)
    return stem[: m.start()] if m else stem.split("%")[0]


def read_official_split(root: Path, split: str, check_files: bool = True) -> list[Sample]:
    """Samples of one official split, each grouped by the paper it was cut from (covid_ct_group: folds and any
    re-split keep a paper together); every file named in it must exist."""
    samples: list[Sample] = []
    for label, class_name in enumerate(CLASS_NAMES):
        split_file = official_split_file(root, class_name, split)
        image_dir = official_image_dir(root, class_name)
        names = read_split_file(split_file)
        paths = [image_dir / name for name in names]
        missing = [p.name for p in paths if check_files and not p.is_file()]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise DataError(f"split file {split_file} names {len(missing)} file(s) missing from {image_dir}: {shown}")
        samples += [Sample(p, label, group=covid_ct_group(p.name)) for p in paths]
    return samples


def class_order(names: Sequence[str]) -> tuple[str, ...]:
    """Class names in label order: for two classes the negative one (non/normal/healthy...) is 0."""
    names = sorted(set(names))
    if len(names) == 2:
        negative = [n for n in names if any(w in n.lower() for w in _NEGATIVE_WORDS)]
        if len(negative) == 1:
            return (negative[0], next(n for n in names if n != negative[0]))
    return tuple(names)


def stratified_split(samples: list[Sample], seed: int, fractions: dict[str, float] | None = None) -> dict:
    """Split samples into train/val/test per class, reproducibly for a given seed."""
    fractions = fractions or DEFAULT_FRACTIONS
    by_label: dict[int, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: str(s.path)):
        by_label[s.label].append(s)
    out: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    rng = random.Random(seed)
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_val = max(1, round(len(group) * fractions["val"]))
        n_test = max(1, round(len(group) * fractions["test"]))
        out["val"] += group[:n_val]
        out["test"] += group[n_val : n_val + n_test]
        out["train"] += group[n_val + n_test :]
    return out


def group_split(samples: list[Sample], seed: int, fractions: dict[str, float] | None = None) -> dict:
    """Split into train/val/test with every group in one split, stratified by each group's majority label:
    within a label, groups are shuffled (seeded) and dealt to val and test until each holds its share of images."""
    fractions = fractions or DEFAULT_FRACTIONS
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: str(s.path)):
        groups[s.group or str(s.path)].append(s)
    by_label: dict[int, list[str]] = defaultdict(list)
    for key, members in groups.items():
        labels = [m.label for m in members]
        by_label[max(set(labels), key=labels.count)].append(key)
    out: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    rng = random.Random(seed)
    for label in sorted(by_label):
        keys = sorted(by_label[label])
        rng.shuffle(keys)
        total = sum(len(groups[k]) for k in keys)
        want = {"val": fractions["val"] * total, "test": fractions["test"] * total}
        for key in keys:
            split = next((sp for sp in ("val", "test") if want[sp] > 0), "train")
            out[split] += groups[key]
            if split != "train":
                want[split] -= len(groups[key])
    return out


def folder_splits(root: Path, seed: int) -> SplitData:
    """root/<split>/<class>/* if split folders exist, else root/<class>/* split at random by seed."""
    if all((root / split).is_dir() for split in SPLITS):
        class_names = class_order([d.name for d in (root / "train").iterdir() if d.is_dir()])
        splits = {split: class_folder_samples(root / split, class_names) for split in SPLITS}
        return SplitData(splits, class_names, f"folders {root}/<split>/<class>")
    class_names = class_order([d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")])
    samples = class_folder_samples(root, class_names)
    grouped = any(s.group for s in samples)
    splits = group_split(samples, seed) if grouped else stratified_split(samples, seed)
    how = "seeded split, each subfolder in one split" if grouped else "seeded split"
    return SplitData(splits, class_names, f"folders {root}/<class> ({how})", seeded=True)


def subfolder_group(class_folder: Path, path: Path) -> str:
    """The group of a file in a class folder: its first subfolder (a patient's or a study's folder, as hospitals
    export them), so that a patient's slices never straddle splits or folds; "" for files directly in the folder."""
    rel = path.parent.relative_to(class_folder)
    return f"{class_folder.name}/{rel.parts[0]}" if rel.parts else ""


def class_folder_samples(root: Path, class_names: Sequence[str]) -> list[Sample]:
    """Every slice file under ROOT/<class>/ (label: the class's index), grouped by its first subfolder. Other files
    (a .gif, a .txt) are not read, and a warning names how many and the first (hidden files, named .*, are not
    counted): a labelled image in a format covidct does not read is not dropped in silence."""
    samples = []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"class folder {folder} does not exist (classes: {list(class_names)})")
        listed = listed_files(folder)
        read = [is_slice_file(p) for p in listed]
        files = [p for p, yes in zip(listed, read) if yes]
        others = [p for p, yes in zip(listed, read) if not yes and not p.name.startswith(".")]
        if others:
            log.warning(
                "class folder %s: %d file(s) left out that are not images (%s) or DICOM slices, e.g. %s; "
                "convert them to read them",
                folder,
                len(others),
                ", ".join(sorted(IMAGE_SUFFIXES)),
                others[0],
            )
        samples += [Sample(p, label, group=subfolder_group(folder, p)) for p in files]
    return samples


def csv_splits(csv_path: Path, seed: int) -> SplitData:
    """A CSV with header path,label[,split]; relative paths are relative to the CSV's folder."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise DataError(f"data CSV {csv_path} does not exist") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError(f"data CSV {csv_path} needs a header with columns path,label[,split]")
    class_names = class_order([r["label"].strip() for r in rows])
    index = {name: i for i, name in enumerate(class_names)}
    has_split = "split" in rows[0]
    splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    unsplit: list[Sample] = []
    seen: dict[Path, int] = {}
    for line, row in enumerate(rows, start=2):
        path = Path(row["path"].strip())
        path = path if path.is_absolute() else csv_path.parent / path
        first = seen.setdefault(path.resolve(), line)
        if first != line:  # in two splits, the test figures would be of an image trained on; in one, counted twice
            raise DataError(
                f"data CSV {csv_path} line {line}: {path} is listed already on line {first}; list each image once "
                "(one label, one split)"
            )
        sample = Sample(
            path, index[row["label"].strip()], (row.get("source") or "").strip(), (row.get("group") or "").strip()
        )
        split = (row.get("split") or "").strip()
        if has_split and split:
            if split not in SPLITS:
                raise DataError(f"data CSV {csv_path} line {line}: split must be one of {SPLITS}, got {split!r}")
            splits[split].append(sample)
        else:
            unsplit.append(sample)
    if unsplit:
        grouped = any(s.group for s in unsplit)
        for split, samples in (group_split(unsplit, seed) if grouped else stratified_split(unsplit, seed)).items():
            splits[split] += samples
    return SplitData(splits, class_names, f"csv {csv_path}", seeded=bool(unsplit))


def refuse_repeats(data: SplitData) -> SplitData:
    """`data` when no image is in it twice (by its file, links followed): an image in two splits would put the test
    figures on an image trained on, one in a split twice would count it twice. A DataError names the image and where."""
    seen: dict[Path, str] = {}
    for split, samples in data.splits.items():
        for sample in samples:
            key = sample.path.resolve()
            if key in seen:
                where = f"the {seen[key]} and the {split} split" if seen[key] != split else f"the {split} split twice"
                raise DataError(
                    f"{data.source}: {sample.path} is in {where}; list each image once (a split file or a link "
                    "that names it again)"
                )
            seen[key] = split
    return data


def load_splits(data_dir: str | Path, data_csv: str | Path | None = None, seed: int = 42) -> SplitData:
    """Find the data: a CSV if given, else the official layout, else class-per-folder trees."""
    if data_csv:
        return csv_splits(Path(data_csv), seed)
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist. Point --data-dir (or COVIDCT_DATA_DIR) at the COVID-CT "
            f"dataset, or download it with: covidct data download --dest {root}"
        )
    if is_official_layout(root):
        splits = {split: read_official_split(root, split) for split in SPLITS}
        return refuse_repeats(SplitData(splits, CLASS_NAMES, f"COVID-CT official split {root}"))
    if any(d.is_dir() for d in root.iterdir()):
        return refuse_repeats(folder_splits(root, seed))
    raise DataError(
        f"data folder {root} is neither the COVID-CT layout (Images-processed/ + Data-split/) nor "
        "class-per-folder images; see the docs, how-to 'Use your own data'"
    )


class SeededDraws(torch.utils.data.Sampler):
    """A sampler of indices made into one of (index, seed) pairs: each draw carries the seed of its augmentation, and
    an epoch's draws and seeds follow from (seed, epoch) alone, in the main process.

    Why: each loader worker draws augmentations from its own random state, and which worker gets which image depends
    on their number, so without this the same --seed trains on other augmentations with another --num-workers (on
    another machine, whose core count sets the default). With it a draw is augmented the same way whichever worker
    decodes it, and a resumed run draws what an uninterrupted one would have (Lightning calls set_epoch before each
    epoch, through its DDP wrapper too; tests/integration/test_reproducible.py, test_resume.py)."""

    def __init__(self, sampler: torch.utils.data.Sampler, seed: int) -> None:
        self.sampler = sampler  # one with a `generator` (RandomSampler, WeightedRandomSampler) is reseeded per epoch
        self.seed = seed
        self.epoch = 0

    @classmethod
    def shuffle(cls, dataset: Dataset, seed: int) -> SeededDraws:
        """Every item once per epoch, in an order (and with augmentation seeds) drawn from (seed, epoch)."""
        return cls(torch.utils.data.RandomSampler(dataset, generator=torch.Generator()), seed)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _seed(self, stream: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, stream]).generate_state(1)[0])

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self):
        generator = getattr(self.sampler, "generator", None)
        if generator is not None:
            generator.manual_seed(self._seed(0))
        indices = [int(i) for i in self.sampler]
        seeds = torch.randint(0, 2**62, (len(indices),), generator=torch.Generator().manual_seed(self._seed(1)))
        self.epoch += 1  # the next epoch's, for a loop that does not call set_epoch
        return iter(zip(indices, seeds.tolist()))


def seeded_call(transform: Callable, img: Any, seed: int) -> Any:
    """transform(img) with torch's, Python's and NumPy's global random states seeded for this call only (torchvision
    draws from torch's, some of lightly's transforms from NumPy's), restored afterwards: a loader without workers
    leaves the training's own random state as it was."""
    state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return transform(img)
        finally:
            random.setstate(state)
            np.random.set_state(np_state)


class ImageDataset(Dataset):
    """Items are dicts {image, label, path, index} (index: the position in the dataset). With cache=True every image
    is decoded once; with a DecodedCache (data/cache.py) images are decoded once per content and may come from its
    disk store. A key may be an index or an (index, seed) pair from SeededDraws: the transform then runs seeded."""

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None, cache: Any = False):
        self.samples = list(samples)
        self.transform = transform
        self.store = cache if hasattr(cache, "get") else None  # a DecodedCache
        self.cache = bool(cache)
        self._images: dict[int, np.ndarray] = {}
        # items also carry these statistics of their image, by name (ood/image_statistics.py)
        self.statistics: dict[str, Callable[[Image.Image], np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def with_transform(self, transform: Callable | None) -> ImageDataset:
        """The same images (and what was decoded of them) under another transform."""
        other = ImageDataset(self.samples, transform, cache=self.store if self.store is not None else self.cache)
        other._images, other.statistics = self._images, self.statistics
        return other

    def with_statistics(self, statistics: Mapping[str, Callable[[Image.Image], np.ndarray]]) -> ImageDataset:
        """The same images, each item also carrying each named statistic of the image before the transform
        (the detector's: ood/image_statistics.py's statistics_by_name), from the same decode."""
        other = self.with_transform(self.transform)
        other.statistics = dict(statistics)
        return other

    def preload(self, progress: bool = False) -> None:
        """Decode every image now (shared by forked loader workers); list every unreadable file at once."""
        from tqdm.auto import tqdm

        bad = []
        for i in tqdm(range(len(self)), desc="decoding images", disable=not progress, leave=False):
            try:
                path = self.samples[i].path
                self._images[i] = np.asarray(self.store.get(path) if self.store else load_rgb(path))
            except DataError as e:
                bad.append(str(e))
        if bad:
            raise DataError(f"{len(bad)} image(s) cannot be used:\n  " + "\n  ".join(bad))

    def image(self, i: int) -> Image.Image:
        if i in self._images:
            return Image.fromarray(self._images[i])
        if self.store:
            return Image.fromarray(np.asarray(self.store.get(self.samples[i].path)))
        img = load_rgb(self.samples[i].path)
        if self.cache:
            self._images[i] = np.asarray(img)
        return img

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = self.image(i)
        if self.transform is None:
            image = torch.from_numpy(np.asarray(img).copy())
        else:
            image = self.transform(img) if seed is None else seeded_call(self.transform, img, seed)
        item = {"image": image, "label": self.samples[i].label, "path": str(self.samples[i].path), "index": i}
        item.update({name: of(img) for name, of in self.statistics.items()})
        return item
