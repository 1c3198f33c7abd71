"""Evaluate a run's checkpoint on a split: metrics.json, predictions.csv and the study's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covidct.config import EvalConfig
from covidct.data.lungmask import slice_lung_fraction
from covidct.errors import ModelError
from covidct.evaluation.scoring import score_runs
from covidct.evaluation.summary import summarise_scores
from covidct.evaluation.writing import write_evaluation
from covidct.runs import RunDir


def evaluate_run(run_dir: str | Path | list[str | Path], split: str = "test", **settings: Any) -> dict[str, Any]:
    """evaluate() with EvalConfig's fields as keywords (split, on, out_dir, n_bootstrap, ...): what tests and the
    other stages call."""
    return evaluate(run_dir, EvalConfig(split=split, **settings))


def evaluate(run_dir: str | Path | list[str | Path], config: EvalConfig) -> dict[str, Any]:
    """Score -> summarise_scores -> write: every image of `config.split` scored with the run's checkpoint, metrics.json,
    predictions and figures written into `config.out_dir` (default RUN_DIR/eval-<split>).

    Besides the metrics at the model's threshold, metrics.json holds 95% intervals and the operating points
    chosen on the validation split (Youden's J, sensitivity >= min_sensitivity), applied unchanged to `split`.
    Given several run folders, evaluates their ensemble (`ensemble_mean` of the members' probabilities, each
    member with its own preprocessing) at the first member's threshold; `out_dir` is then required.

    on: evaluate on an external labelled set instead (a source name, folder or CSV: every image of it) into
    eval-<name>/; thresholds still come from the run's own validation split. A warning counts the images whose
    bytes the run trained or validated on.

    per_group: also score each group of the set (a patient's folder, a CSV's group column) as one, its slices'
    scores aggregated this way (covidct.verdict's AGGREGATIONS); metrics.json's per_group and
    group_predictions.csv."""
    c = config
    runs = [Path(r) for r in run_dir] if isinstance(run_dir, list) else [Path(run_dir)]
    if len(runs) > 1 and c.out_dir is None:
        raise ModelError(f"an ensemble of {len(runs)} runs needs an output folder (--out)")
    scored = score_runs(runs, c)
    if c.per_group:  # predict's rule for a volume: only DICOM slices whose HU shows lung count
        scored.lung_fractions = [slice_lung_fraction(x.path) for x in scored.samples]
    result = summarise_scores(scored, c.n_bootstrap, c.min_sensitivity, c.seed, c.calibrate, c.per_group)
    out = Path(c.out_dir) if c.out_dir else RunDir(runs[0]).eval_dir(scored.split)
    write_evaluation(scored, result, out, c.n_bootstrap, c.seed)
    return result
