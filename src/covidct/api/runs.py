"""covidct.api on trained runs: evaluate, compare, report and study them, choose their operating point, export them and
refit their out-of-distribution detector."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidct.api.model import PathLike

if TYPE_CHECKING:
    from covidct.inference.run_detector import DetectorRecipe


def evaluate(run: PathLike | list[PathLike], split: str = "test", on: str | None = None, **settings: Any) -> dict:
    """`covidct evaluate`: the metrics (with 95% intervals, the operating points chosen on validation, per group
    with `per_group`) of a run (or an ensemble of runs) on a split, or on a labelled set `on` (a source name,
    NAME=FOLDER or a CSV); also written to the run's eval folder. settings: EvalConfig's other fields."""
    from covidct.evaluation.evaluate import evaluate_run

    runs = [run] if isinstance(run, (str, Path)) else list(run)
    return evaluate_run(runs if len(runs) > 1 else runs[0], split, on=on, **settings)


def compare(runs: list[PathLike], split: str = "test") -> list[dict[str, Any]]:
    """`covidct compare`: evaluated runs side by side, a row each (metrics with intervals, DeLong's paired test
    against the first run, the settings that differ); `pandas.DataFrame(rows)` makes a table of it.

    >>> rows = cct.compare(["runs/a", "runs/b"])  # doctest: +SKIP
    """
    from covidct.evaluation.compare import compare_runs

    return compare_runs(list(runs), split)


def report(run: PathLike, split: str = "test", data_dir: PathLike | None = None) -> Path:
    """`covidct report`: RUN/report.html, one self-contained page (evaluating the run on `split` first if needed)."""
    from covidct.reporting.html import build_report

    return build_report(run, split, data_dir)


def study(run: PathLike) -> str:
    """`covidct study`: the seed study's published table beside the run's test figures, as text."""
    from covidct.reporting.study import study_text

    return study_text(run)


def export(
    run: PathLike, format: str = "both", out: PathLike | None = None, data_dir: PathLike | None = None
) -> list[Path]:
    """`covidct export`: the run's best model as safetensors (PyTorch: Grad-CAM, adaptation) and an ONNX graph checked
    against PyTorch on the run's validation images (or `data_dir`'s), with its card and detector, in `out` (default
    RUN/export); format: both, safetensors or onnx. Returns the files written; `load(out)` scores with them."""
    from covidct.inference.export import export_run

    return export_run(run, format, out, data_dir)


def choose_threshold(
    run: PathLike,
    rule: str | float = "youden",
    on: str | None = None,
    min_sensitivity: float = 0.95,
    checkpoint: str = "best",
    data_dir: PathLike | None = None,
) -> dict:
    """`covidct threshold`: choose the run's operating point by a registered rule (covidct.evaluation.rules) on the
    validation split or on the labelled set `on`, or give a number; recorded where every path reads it.
    checkpoint: best or last; data_dir: instead of the run's own."""
    from covidct.evaluation.thresholds import store_threshold

    return store_threshold(run, str(rule), min_sensitivity, checkpoint, str(data_dir) if data_dir else None, on)


def fit_detector(
    run: PathLike, recipe: DetectorRecipe | None = None, data_dir: PathLike | None = None, site: str | None = None
) -> dict[str, Any]:
    """`covidct ood fit`: (re)fit the run's out-of-distribution detector on its training images, thresholded on its
    validation images (one per training source), and save it with the run and its export; returns what it is
    (method, threshold, images, share of validation flagged). An adapted run keeps its site's images as seen (from
    its record, or `site`: NAME=PATH). recipe: a DetectorRecipe (method, percentile; covidct.ood.fit).

    Example::

        cct.fit_detector("runs/demo")["val_flagged"]     # about 0.05 by construction
    """
    from covidct.adaptation.site import adapted_site
    from covidct.inference.run_detector import DEFAULT_RECIPE, fit_for_run

    adapted = adapted_site(Path(run), site)  # an adapted run's detector keeps its site's own
    seen = None if adapted is None else adapted.seen_samples()
    return fit_for_run(run, recipe or DEFAULT_RECIPE, data_dir, seen).describe()
