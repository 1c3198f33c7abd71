"""A site to adapt to: its labelled images and their groups (patients; near-duplicate images joined), read from a
source spec (NAME=FOLDER or CSV), refused when it overlaps what the model trained on; and the batch shift test of
its images against the source model's reference (how far the site is before adapting)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.data import Sample
from covidct.data.sources import external_set, parse_source
from covidct.errors import ConfigError, DataError
from covidct.evaluation.scoring import training_overlap
from covidct.runs import RunDir
from covidct.studies.cv import near_duplicate_groups, with_sample_groups

log = logging.getLogger("covidct")


@dataclass
class Site:
    """A site's labelled images with a group (patient) id per image."""

    name: str
    spec: str
    samples: list[Sample]
    labels: np.ndarray
    groups: np.ndarray
    group_duplicates: bool = True  # near-duplicate images' groups joined (site_groups)

    def group_counts(self) -> dict[int, int]:
        """Groups per class."""
        return {c: len(set(self.groups[self.labels == c])) for c in (0, 1)}

    def seen_samples(self) -> list[Sample]:
        """The site's images as an adapted model's detector counts them: seen in training, each with its patient
        (the site's group, after near-duplicates were joined) as its group, named apart from the source's groups."""
        return [dataclasses.replace(s, group=f"site {g}") for s, g in zip(self.samples, self.groups.tolist())]


def site_groups(samples: list[Sample], group_duplicates: bool) -> np.ndarray:
    """A group id per image: its own group (patient, block, paper), joined with its near-duplicate cluster within its
    class (neighbouring slices straddle blocks), so no near-copy of a scored image is among the fitted ones. A
    near-duplicate of an image of the other class is a label conflict of the data set, not a patient: not joined."""
    ids = np.arange(len(samples))
    if group_duplicates:
        for label in (0, 1):
            members = np.flatnonzero([s.label == label for s in samples])
            if len(members):
                ids[members] = len(samples) * (label + 1) + near_duplicate_groups([samples[i] for i in members])
    return with_sample_groups(ids, samples)


def load_site(run_dir: Path, spec: str, allow_overlap: bool = False, group_duplicates: bool = True) -> Site:
    """The site's labelled set, checked: two classes, no image the run trained on, and in a CSV (a site's own patient
    list) no group holding both classes. A known source's groups (a paper of COVID-CT can show both classes) are
    split by class instead."""
    name, samples = external_set(spec)
    labels = np.array([s.label for s in samples])
    if len(set(labels.tolist())) < 2:
        raise DataError(f"--source {spec}: one class only; adapting needs labelled patients of both classes")
    overlap = training_overlap(RunDir.at(run_dir), samples)
    if overlap and not allow_overlap:
        raise DataError(
            f"--source {spec}: {overlap} of {len(samples)} images have the same content as images "
            f"{run_dir} trained or validated on; remove them, or pass --allow-overlap"
        )
    given: dict[str, set[int]] = {}
    for sample in samples:
        if sample.group:
            given.setdefault(sample.group, set()).add(sample.label)
    mixed = sorted(g for g, classes in given.items() if len(classes) > 1)
    if mixed and Path(spec.partition("=")[2] or spec).suffix.lower() == ".csv":
        raise DataError(
            f"--source {spec}: {len(mixed)} group(s) hold both classes (e.g. {mixed[:3]}); a group is "
            "one patient with one label"
        )
    if mixed:
        log.info("%d group(s) of %s hold both classes: split by class", len(mixed), spec)
        samples = [dataclasses.replace(s, group=f"{s.group}|{s.label}") if s.group in mixed else s for s in samples]
    return Site(name, spec, samples, labels, site_groups(samples, group_duplicates), group_duplicates)


def adapted_site(run_dir: Path, spec: str | None = None) -> Site | None:
    """The site an adapted run was adapted on (its summary's record, or `spec`), so that refitting its detector
    (`covidct ood fit`) keeps the site's own; None for a run that was not adapted and no `spec`."""
    adaptation = RunDir.at(run_dir).summary().get("adaptation") or {}
    if spec is not None and not adaptation:  # the detector says what the model learned; it never learned this site
        raise ConfigError(
            f"--site is for an adapted run, and {run_dir} was not adapted: its model never learned "
            f"{parse_source(spec)[0]}'s images, so its detector must not pass them as seen. Adapt it "
            "first (covidct adapt RUN --source NAME=PATH): that fits its detector with the site"
        )
    spec = spec or adaptation.get("site_spec")
    if spec is None and adaptation:
        raise ConfigError(
            f"{run_dir} was adapted on {adaptation.get('site')}, but its record does not say where "
            "those images are (an adaptation by an older covidct): pass --site NAME=PATH, so that its "
            "detector keeps the site"
        )
    if spec is None:
        return None
    return load_site(run_dir, spec, allow_overlap=True, group_duplicates=adaptation.get("group_duplicates", True))


def absolute_spec(spec: str) -> str:
    """A source spec whose path (if it has one) is absolute, so that the record finds it from any folder later."""
    name, path = parse_source(spec)
    return spec if path is None else f"{name}={path.resolve()}"


def site_shift(model: Any, source: RunDir, site: Site) -> dict[str, Any]:
    """The batch shift test (covidct.ood.shift) of the site's images against the source model's reference: how far
    the site is from the images the model was validated on, before it is adapted."""
    from covidct.evaluation.scoring import eval_dataset, predict_scores_and_ood
    from covidct.inference.load import with_detector

    checked = with_detector(model, source.ood_dir)
    with checked.collecting() as outputs:  # read as `covidct evaluate --on` reads a set (DICOM slices too)
        predict_scores_and_ood(checked, eval_dataset(checked, site.samples), tta=False)
    return checked.batch_shift(outputs)


def site_shift_text(record: dict[str, Any], site: Site) -> str:
    if not record.get("tested"):
        return f"the site's images were not tested as a batch ({record['why']})"
    differs = "differ" if record["shifted"] else "do not differ detectably"
    p = f"p = {record['p_value']:.2g}"
    return f"before adapting, {site.name}'s images {differs} from the model's validation images ({p})"
