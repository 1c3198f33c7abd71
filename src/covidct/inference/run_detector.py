"""A run's out-of-distribution detector: fitted from the run folder (`covidct ood fit RUN`, for runs trained before
detectors, and at export when a run has none) and saved where predict and serve look for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from covidct.ood.acquisition import AcquisitionRecord
from covidct.ood.detector import OODDetector
from covidct.ood.fit import DEFAULT_RECIPE, DetectorRecipe, fit_for_network, sample_sources
from covidct.ood.storage import save_detector
from covidct.runs.model_card import CARD_NAME

__all__ = ["DEFAULT_RECIPE", "DetectorRecipe", "fit_and_save", "fit_for_run", "model_scores", "save_for_run"]


def fit_for_run(
    run_dir: str | Path,
    recipe: DetectorRecipe = DEFAULT_RECIPE,
    data_dir: str | Path | None = None,
    extra_train: list | None = None,
) -> OODDetector:
    """`covidct ood fit RUN`: the run's best model and data; saved into the run (and into its export, when it has
    one, so predict and serve use it). extra_train: more samples that count as seen (an adapted model's site:
    Site.seen_samples), each with its patient as its group, for its out-of-fold threshold."""
    from covidct.data import ImageDataset
    from covidct.runs import RunDir

    run = RunDir.at(run_dir)
    data = run.data(data_dir)
    train, val = ImageDataset(list(data.splits["train"]) + list(extra_train or [])), ImageDataset(data.splits["val"])
    return fit_and_save(run, train, val, recipe)


def fit_and_save(
    run: Any, train: Any, val: Any, recipe: DetectorRecipe = DEFAULT_RECIPE, model: Any = None
) -> OODDetector:
    """The detector of the run's best model on `train` (threshold on `val`; one per training source:
    covidct.ood.fit.fit_by_source), ImageDatasets whose images (and what was decoded of them) are used under the
    model's own evaluation transform; saved with the run. `model`: that model as training left it in memory (else
    read from the run)."""
    from covidct.inference.load import load_checkpoint, weights_fingerprint

    model = model or load_checkpoint(run.checkpoint("best"), run)
    sources = sample_sources(train.samples)
    info = {
        "fitted_on": sorted(set(sources)),
        "split": "train",
        # without validation images (every labelled image trained) each source's threshold is set out of fold
        "threshold_on": "val" if len(val) else "out of fold by group (no validation split)",
        "weights_sha256": weights_fingerprint(model),  # the model it was fitted for: checked where it is loaded
    }
    detector = fit_for_network(
        model.scoring().network,
        model.architecture,
        train.with_transform(model.transform),
        val.with_transform(model.transform),
        recipe,
        info,
    )
    detector.acquisitions = AcquisitionRecord.of_paths((s.path for s in train.samples), sources)  # per source
    if detector.reference is not None:  # the validation images' labels and scores: batches matched to their mix
        labels = np.array([s.label for s in val.samples])
        detector.reference = detector.reference.with_labels(labels, model_scores(model, val))
    save_for_run(run, detector)
    return detector


def model_scores(model: Any, dataset: Any) -> np.ndarray:
    """The model's scores (its whole scorer, as predict scores) of every item of an ImageDataset, in order."""
    from covidct.models.hooks import run_over

    scorer = model.scoring()
    ds = dataset.with_transform(model.transform)
    return np.concatenate([s.numpy() for _, s in run_over(scorer, ds, 32, lambda x: model.score_batch(x, False)[0])])


def save_for_run(run: Any, detector: OODDetector) -> None:
    save_detector(detector, run.ood_dir)
    if (run.export_dir / CARD_NAME).is_file():
        save_detector(detector, run.export_dir)
