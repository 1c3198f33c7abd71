"""covidct adapt: the adapted model, an ordinary run folder: the source network adapted on all of a site's labelled
images by one strategy (the curve's adapters: curve.py), its operating point chosen on the site's leave-groups-out
cross-validation, its detector refitted with the site's images, and a record of how (site.py: the site)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from covidct.adaptation.curve import Adapter, start_from, strategy_adapters
from covidct.adaptation.site import Site, absolute_spec, site_shift, site_shift_text
from covidct.adaptation.tail import fine_tune_tail
from covidct.config import DEFAULT_STRATEGY, STRATEGY_TEXT
from covidct.errors import ConfigError, DataError
from covidct.evaluation.metrics import binary_metrics, roc_auc
from covidct.evaluation.rules import choose_by_rule
from covidct.evaluation.thresholds import record_operating_point
from covidct.fileio import atomic_write
from covidct.inference.load import load_checkpoint, read_checkpoint
from covidct.inference.run_detector import fit_for_run
from covidct.models import head_module
from covidct.models.head import fit_head, set_linear_head
from covidct.runs import RunDir
from covidct.runs.operating_point import OperatingPoint
from covidct.studies.cv import cv_folds
from covidct.training.fit import write_graph


def site_validation(adapt: Adapter, site: Site, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Leave-groups-out cross-validation of a strategy at the site: out-of-fold scores of every image, the AUC, and
    the threshold by Youden's J on them (the adapted model's operating point)."""
    counts = site.group_counts()
    n_groups = min(counts.values())
    if n_groups < 2:  # every fold must train on both classes and hold out a patient of each
        joined = " (near-duplicate images joined into one group)" if site.group_duplicates else ""
        raise DataError(
            f"site {site.name}: {counts[0]} NonCOVID and {counts[1]} COVID group(s) (patients){joined}; adapting "
            "needs at least 2 of each class, one to fit on while another is held out. Add patients of the smaller "
            "class" + (", or pass --no-group-duplicates if the copies are different patients' images" if joined else "")
        )
    folds = max(2, min(folds, n_groups))
    oof = np.zeros(len(site.labels))
    for i, held in enumerate(cv_folds(site.labels, site.groups, folds, seed)):
        scored = np.zeros(len(oof), dtype=bool)
        scored[held] = True
        oof[scored] = adapt(~scored, scored, i)
    t = choose_by_rule("youden", site.labels, oof)
    m = binary_metrics(site.labels, oof, t)
    return {
        "method": f"{folds}-fold cross-validation by group",
        "auc": roc_auc(site.labels, oof),
        "threshold": t,
        "sensitivity": m.sensitivity,
        "specificity": m.specificity,
        "accuracy": m.accuracy,
    }


def adapted_network(model: Any, site: Site, strategy: str) -> dict[str, Any]:
    """Adapt `model.module` in place on all the site's images by `strategy`; returns the site validation of it."""
    start = start_from(model.module, site, model.transform, with_maps=strategy == "lp-ft")
    validation = site_validation(strategy_adapters("", start, site.labels, (strategy,))[strategy], site)
    if strategy == "lp-ft":
        fine_tune_tail(model.module, start.maps, site.labels, seed=0, pooled=start.pooled)
    else:
        w, b = fit_head(start.pooled, site.labels)
        set_linear_head(head_module(model.module), w, b)
    return validation


def adapt_run(run_dir: Path, site: Site, out_parent: Path, strategy: str = DEFAULT_STRATEGY) -> Path:
    """The adapted model: the source network adapted on all the site's images by `strategy`, as an ordinary run
    folder (checkpoint, config, summary, threshold record, out-of-distribution detector including the site)."""
    import shutil

    import torch

    source = RunDir.at(run_dir)
    model = load_checkpoint(source.checkpoint("best"), source)
    before = site_shift(
        model, source, site
    )  # before adapting: how far the site is from what the model was validated on
    validation = adapted_network(model, site, strategy)
    saved = read_checkpoint(source.checkpoint("best"))
    hp = dict(saved["hyper_parameters"])
    run = RunDir(out_parent / f"{source.name}-adapted-{site.name}")
    if run.path.exists():
        raise ConfigError(f"{run.path} exists already; remove it or choose another --out")
    run.checkpoints_dir.mkdir(parents=True)
    shutil.copy(source.config_path, run.config_path)
    state = {f"model.{k}": v.contiguous() for k, v in model.module.state_dict().items()}
    ckpt = {"state_dict": state, "hyper_parameters": hp, "epoch": int(saved.get("epoch", 0))}
    atomic_write(run.checkpoint_path("best"), lambda p: torch.save(ckpt, p))
    adaptation = adaptation_record(source, site, strategy, validation, before)
    run.write_summary({**source.summary(), "adaptation": adaptation})
    point = OperatingPoint(
        threshold=float(validation["threshold"]),
        rule="youden",
        chosen_on=site.name,
        checkpoint=run.checkpoint_path("best").name,
        set=site.spec,
        metrics=validation,
        how=validation["method"],
    )
    record_operating_point(run, point)
    fit_for_run(run.path, extra_train=site.seen_samples())
    write_graph(run)
    return run.path


def adaptation_record(
    source: RunDir, site: Site, strategy: str, validation: dict[str, Any], before: dict[str, Any]
) -> dict[str, Any]:
    """What the adapted run's summary and card say of its adaptation: where from, on what, how, how it validated at
    the site, how far the site was before, and all of it in one sentence."""
    groups = len(np.unique(site.groups))
    text = (
        f"adapted on {site.name} ({groups} groups, {len(site.samples)} images) from {source.name}; "
        f"validated at the site by leave-groups-out: AUC {validation['auc']:.3f}; {site_shift_text(before, site)}"
    )
    return {
        "from_run": str(source.path),
        "site": site.name,
        "site_spec": absolute_spec(site.spec),
        "group_duplicates": site.group_duplicates,
        "groups": groups,
        "images": len(site.samples),
        "strategy": f"{strategy}: {STRATEGY_TEXT[strategy]}",
        "validated_at_site": validation,
        "site_shift_before": before,
        "text": text,
    }
