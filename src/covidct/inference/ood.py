"""A run's out-of-distribution detector: fitted from the run folder (`covidct ood fit RUN`, for runs trained before
detectors, and at export when a run has none) and saved where predict and serve look for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covidct.ood.acquisition import AcquisitionRecord
from covidct.ood.detector import DEFAULT_PERCENTILE, OODDetector
from covidct.ood.fit import DEFAULT_METHOD, fit_for_network


def fit_for_run(
    run_dir: str | Path,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    data_dir: str | Path | None = None,
    extra_train: list | None = None,
) -> OODDetector:
    """`covidct ood fit RUN`: the run's best model and data; saved into the run (and into its export, when it has
    one, so predict and serve use it). extra_train: more samples that count as seen (an adapted model's site)."""
    from covidct.data import ImageDataset
    from covidct.runs import RunDir

    run = RunDir.at(run_dir)
    data = run.data(data_dir)
    train = ImageDataset(list(data.splits["train"]) + list(extra_train or []))
    return fit_and_save(run, train, ImageDataset(data.splits["val"]), method, percentile)


def fit_and_save(
    run: Any, train: Any, val: Any, method: str = DEFAULT_METHOD, percentile: float = DEFAULT_PERCENTILE
) -> OODDetector:
    """The detector of the run's best checkpoint on `train` (threshold on `val`), ImageDatasets whose images (and
    what was decoded of them) are used under the model's own evaluation transform; saved with the run."""
    from covidct.inference.load import load_checkpoint

    model = load_checkpoint(run.checkpoint("best"), run)
    info = {"fitted_on": sorted({s.source or "train" for s in train.samples}), "split": "train",
            "threshold_on": "val"}  # fmt: skip
    # The pixel half for one training source only: one Gaussian over two sources' pixel statistics puts the smaller
    # source in its tail (measured on a model trained on both: 23% of its own COVID-CT images flagged; OOD.md).
    detector = fit_for_network(model.scoring()[0], model.architecture, train.with_transform(model.transform),
                               val.with_transform(model.transform), method, percentile, info,
                               pixels=len(info["fitted_on"]) == 1)  # fmt: skip
    detector.acquisitions = AcquisitionRecord.of_paths(s.path for s in train.samples)
    save_for_run(run, detector)
    return detector


def save_for_run(run: Any, detector: OODDetector) -> None:
    detector.save(run.ood_dir)
    if (run.export_dir / "model.json").is_file():
        detector.save(run.export_dir)
