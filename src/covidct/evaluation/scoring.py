"""Scoring: the only stage of an evaluation that runs a model. Every image of a split (or an external set) scored by
each run, with its out-of-distribution score; ensembles as the mean of their members' probabilities."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from covidct.config import EvalConfig
from covidct.data import ImageDataset, Sample
from covidct.data.audit.shortcut import view_statistics_table
from covidct.data.sources import external_set
from covidct.data.transforms import view_transform
from covidct.errors import DataError
from covidct.inference.load import load_checkpoint, with_detector
from covidct.inference.loaded import LoadedModel
from covidct.ood.image_statistics import statistics_by_name
from covidct.runs import RunDir, find_checkpoint
from covidct.verdict import flags_with_acquisition


def load_classifier(checkpoint: str | Path, operating_point: bool = True) -> LoadedModel:
    """The model of a checkpoint (read safely: weights_only), ready to score; operating_point=False: without reading
    its threshold (load_checkpoint)."""
    ckpt = Path(checkpoint)
    run = RunDir.of_checkpoint(ckpt)
    return load_checkpoint(ckpt, run, operating_point)


@torch.no_grad()
def predict_scores(
    module: LoadedModel, dataset: ImageDataset, batch_size: int = 32, num_workers: int = 0, tta: bool = False
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels, scores) where score = probability of class 1 (COVID), in fp32.

    tta: test-time augmentation, the mean of the probabilities of the image and of its left-right mirror (the
    flip the training augmentation already uses)."""
    paths, labels, scores, _ = predict_scores_and_ood(module, dataset, batch_size, num_workers, tta, check=False)
    return paths, labels, scores


@torch.no_grad()
def predict_scores_and_ood(
    module: LoadedModel,
    dataset: ImageDataset,
    batch_size: int = 32,
    num_workers: int = 0,
    tta: bool = False,
    check: bool = True,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
    """predict_scores and, when the model has a detector (and check), each image's out-of-distribution score from
    the same forward pass (of the image as it is, not its mirror)."""
    check = check and module.ood is not None
    halves = module.ood.image_halves if check else ()
    if halves:  # each item also carries the statistics the detector checks, taken from the same decode
        dataset = dataset.with_statistics(statistics_by_name(halves))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    paths: list[str] = []
    labels, scores, ood = [], [], []
    for batch in loader:
        x = batch["image"]
        p, batch_ood = module.score_batch(x, check, {name: batch[name].numpy() for name in halves})
        ood.append(batch_ood)
        if tta:
            p = (p + module.score_batch(x.flip(-1), False)[0]) / 2
        scores.append(p.cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        paths += list(batch["path"])
    return paths, np.concatenate(labels), np.concatenate(scores), np.concatenate(ood) if check else None


def ensemble_mean(scores: list[np.ndarray]) -> np.ndarray:
    """An ensemble's score: the arithmetic mean of its members' probabilities (equal weights, nothing fitted)."""
    if not scores:
        raise ValueError("an ensemble needs at least one member")
    shapes = {s.shape for s in scores}
    if len(shapes) != 1:
        raise ValueError(f"members scored different numbers of images: {sorted(shapes)}")
    return np.mean(np.stack(scores), axis=0)


def eval_dataset(module: LoadedModel, samples: list[Sample]) -> ImageDataset:
    """Samples as the model expects them at evaluation: its own preprocessing, no augmentation."""
    return ImageDataset(samples, module.transform)


def file_digests(paths: list[Path]) -> set[str]:
    return {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def training_overlap(run: RunDir, samples: list[Sample], data_dir: str | Path | None = None) -> int:
    """How many of `samples` have the same bytes as an image the run trained or validated on (its data found as
    RunDir.data finds it; `data_dir`: --data-dir)."""
    data = run.data(data_dir)
    seen = file_digests([s.path for sp in ("train", "val") for s in data.splits[sp]])
    return sum(h in seen for h in (hashlib.sha256(Path(s.path).read_bytes()).hexdigest() for s in samples))


def external_samples(run: RunDir, on: str, data_dir: str | Path | None = None) -> tuple[str, list[Sample], int]:
    """(name, samples, overlap) of the labelled set `on` (every image of it), with a warning when `overlap` of its
    images have the bytes of images the run trained or validated on: figures on those are not external."""
    name, samples = external_set(on)
    overlap = training_overlap(run, samples, data_dir)
    if overlap:
        warnings.warn(
            f"{overlap} of {len(samples)} images of {on} have the same content as images the run trained or "
            "validated on: this is not an external validation for them",
            stacklevel=4,  # past this helper and its caller: where the evaluation was asked for
        )
    return name, samples, overlap


@dataclass
class Scored:
    """What scoring a run (or an ensemble) on a set of images gives: all that summarising and writing need."""

    runs: list[Path]
    split: str
    paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    samples: list[Sample]
    val_paths: list[str] | None
    val_labels: np.ndarray | None
    val_scores: np.ndarray | None
    threshold: float
    class_names: list[str]
    architectures: list[str]
    epochs: list[int]
    checkpoint: str
    tta: bool = False
    external: dict[str, Any] | None = None
    view_stats: dict[str, np.ndarray] | None = None  # image statistics of an external set (evaluation/score_drivers.py)
    lung_fractions: list[float | None] | None = None  # per slice, from HU (DICOM only), for per-group scoring
    ood_scores: np.ndarray | None = None  # out-of-distribution score per image (single runs with a detector)
    ood_flags: np.ndarray | None = None  # True: unlike the training images
    shift: dict[str, Any] | None = None  # an external set tested as one batch against the model's reference


def score_runs(runs: list[Path], config: EvalConfig) -> Scored:
    """Score `config.split` (or the external set `config.on`) and the validation split with each run, by the
    checkpoint, data folder and TTA `config` names; an ensemble's score is the mean of its members' probabilities.
    The only stage of an evaluation that runs a model."""
    split, on, threshold, tta = config.split, config.on, config.threshold, config.tta
    external: list[Sample] | None = None
    overlap = 0
    if on is not None:
        split, external, overlap = external_samples(RunDir.at(runs[0]), on, config.data_dir)
    members = [score_member(run, replace(config, split=split), external, single=len(runs) == 1) for run in runs]
    first = members[0]
    paths, labels, _ = first["scored"]
    for m in members[1:]:
        if m["scored"][0] != paths:
            raise DataError(f"runs {first['run']} and {m['run']} score different images of split {split!r}")
    scores = ensemble_mean([m["scored"][2] for m in members])
    val_paths, val_labels, val_scores = (paths, labels, scores) if split == "val" else shared_validation(members)
    module = first["module"]
    # on an external set: simple statistics of every image, for what the scores follow there (first member's view)
    view_stats = view_statistics_table(paths, view_transform(module.preprocessing)) if on is not None else None
    return Scored(
        runs=runs,
        split=split,
        paths=paths,
        labels=labels,
        scores=scores,
        samples=first["samples"],
        val_paths=val_paths,
        val_labels=val_labels,
        val_scores=val_scores,
        threshold=float(module.threshold if threshold is None else threshold),
        class_names=module.class_names,
        architectures=[m["module"].architecture for m in members],
        epochs=[int(m["module"].card.checkpoint["epoch"]) for m in members],
        checkpoint=first["ckpt"].name,
        tta=tta,
        external={"set": on, "images_seen_in_training": overlap} if on is not None else None,
        view_stats=view_stats,
        ood_scores=first["ood"],
        ood_flags=checked_flags(module, paths, first["ood"]),
        shift=first["shift"],
    )


def checked_flags(module: LoadedModel, paths: list[str], ood: np.ndarray | None) -> np.ndarray | None:
    """The detector's flags, and every image whose acquisition (a DICOM or NIfTI header) the training images did
    not hold (covidct.ood.acquisition); None without a detector."""
    from covidct.ood.acquisition import of_file

    flags = module.ood_flags(ood)
    if flags is None:
        return None
    return flags_with_acquisition(flags, [module.unseen_acquisition(of_file(p)) for p in paths])


def score_member(run: Path, config: EvalConfig, external: list[Sample] | None, single: bool) -> dict[str, Any]:
    """One run's scores of the split (or external set) and of its validation split, with its detector's scores
    when it is evaluated alone (an ensemble has no one detector)."""
    split, tta = config.split, config.tta
    ckpt = find_checkpoint(run, config.checkpoint)
    data = RunDir.at(run).data(config.data_dir)
    if external is None and split not in data.splits:
        raise DataError(f"split must be one of {list(data.splits)}, got {split!r}")
    module = load_classifier(ckpt)
    run_of_ckpt = RunDir.of_checkpoint(ckpt)
    if single and run_of_ckpt is not None and ckpt.name == run_of_ckpt.checkpoint_path("best").name:
        module = with_detector(module, run_of_ckpt.ood_dir)  # fitted for the best checkpoint: not another one's
    if torch.cuda.is_available():  # thousands of images of an external set: seconds instead of minutes
        module.to("cuda")
    samples = external if external is not None else data.splits[split]
    if not samples:
        raise DataError(f"{run}: its {split} split holds no images (a run trained on every labelled image has no val)")
    with module.collecting() as outputs:  # an external set as one batch: the shift test's input (covidct.ood.shift)
        paths, labels, scores, ood = predict_scores_and_ood(module, eval_dataset(module, samples), tta=tta)
    shift = module.batch_shift(outputs) if external is not None and single else None
    held = data.splits["val"] if split != "val" else []  # none: a fixed schedule trained on every labelled image
    val = predict_scores(module, eval_dataset(module, held), tta=tta) if held else None
    return {
        "run": run,
        "ckpt": ckpt,
        "module": module,
        "scored": (paths, labels, scores),
        "val": val,
        "samples": samples,
        "ood": ood,
        "shift": shift,
    }


def shared_validation(members: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
    """(paths, labels, ensemble scores) of the validation split every member holds, or Nones: e.g. the runs of
    cross-validation folds, where no validation set is unseen by every member."""
    first = members[0]["val"]
    if first is None or not all(m["val"][0] == first[0] for m in members):
        return None, None, None
    return first[0], first[1], ensemble_mean([m["val"][2] for m in members])
