"""covidct evaluate, threshold, compare and report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from covidct.cli.common import config_args, settings_from_args
from covidct.verdict import AGGREGATIONS, DEFAULT_AGGREGATION


def evaluate_and_print(run_dir: Path | list[Path], config: Any) -> None:
    """Evaluate (an EvalConfig) and print the table, calibration, per-group and external-set lines."""
    from covidct import api
    from covidct.evaluation.writing import metrics_table

    result = api.evaluate(run_dir, **config.to_dict())
    on, out = config.on, config.out_dir
    cal = result["calibration"]
    line = f"calibration: ECE {cal['ece']:.3f}"
    if "temperature" in cal:
        line += f"; temperature {cal['temperature']:.2f} (fitted on val) -> ECE {cal['ece_calibrated']:.3f}"
    print(metrics_table(result))
    print(line)
    if result.get("per_group"):
        print(group_line(result["per_group"]))
    if result.get("score_drivers"):
        from covidct.evaluation.score_drivers import driver_warnings, drivers_text

        print(f"on {on}: {drivers_text(result['score_drivers'])}")
        for w in driver_warnings(result["score_drivers"]):
            print(f"warning: on {on}, {w}")
    if result.get("shift"):
        from covidct.cli.inference import shift_message

        print(f"on {on}: {shift_message(result['shift'])}")
    if result.get("external") and result["external"]["images_seen_in_training"]:
        print(f"warning: {result['external']['images_seen_in_training']} images of {on} were seen in training")
    first = Path(run_dir if not isinstance(run_dir, list) else run_dir[0])
    from covidct.runs import RunDir

    where = Path(out) if out else RunDir(first).eval_dir(result["split"])
    print(f"wrote metrics, predictions and figures to {where}")


def group_line(g: dict[str, Any]) -> str:
    """One line of the per-group (patient) figures."""
    from covidct.fileio.tables import interval_text, number_text

    auc = f"AUC {number_text(g['auc'])} {interval_text(g.get('auc_delong'))}".strip()
    both = f"; {g['groups_with_both_labels']} with slices of both labels" if g["groups_with_both_labels"] else ""
    return (
        f"per group ({g['groups']} groups, {g['slices_per_group']['median']:g} slices each (median){both}; "
        f"{g['aggregation']} of slice scores): {auc}, accuracy {number_text(g['accuracy'])}, sensitivity "
        f"{number_text(g['sensitivity'])}, specificity {number_text(g['specificity'])}, "
        f"TP/TN/FP/FN {g['tp']}/{g['tn']}/{g['fp']}/{g['fn']}"
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from covidct.config import EvalConfig

    runs = args.run_dir if len(args.run_dir) > 1 else args.run_dir[0]
    if args.data_dir and not args.on:
        print(seeded_split_note(args.run_dir[0], args.data_dir, args.split) or "", end="")
    evaluate_and_print(runs, settings_from_args(args, EvalConfig, per_group=args.per_group))
    return 0


def seeded_split_note(run_dir: Path, data_dir: str, split: str) -> str | None:
    """A line saying that --data-dir's folder has no splits of its own, so that --split scores only the share of it
    that a seeded draw put there (a user who meant every image wants --on); None when its splits are its own.
    Reading the data here also refuses, before any scoring, a folder whose classes cannot be told apart."""
    from covidct.runs import RunDir

    if not Path(run_dir).is_dir():  # a .ckpt given directly: its run folder is found when it is scored
        return None
    data = RunDir.at(run_dir).data(data_dir)
    if not data.seeded or split not in data.splits:
        return None
    n, total = len(data.splits[split]), sum(len(s) for s in data.splits.values())
    return (
        f"note: {data_dir} has no split folders: its images were split at random, and --split {split} scores "
        f"{n} of its {total} images; to score every image: covidct evaluate RUN --on {data_dir}\n"
    )


def cmd_threshold(args: argparse.Namespace) -> int:
    from covidct import api

    r = api.choose_threshold(args.run_dir, args.choose, args.on, args.min_sensitivity, args.checkpoint, args.data_dir)
    where = f"chosen on {r['chosen_on']} by {r['rule']}" if r["chosen_on"] else "given"
    print(f"threshold {r['threshold']:.4f} ({where}) stored in {args.run_dir}/checkpoints/{r['checkpoint']}")
    if r["set"]:
        print(f"figures on {r['chosen_on']} at this threshold are optimistic: evaluate other patients of that site")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from covidct import api
    from covidct.fileio.tables import table_text, write_table

    runs = args.run_dirs
    if args.mlflow is not None or any(not Path(r).exists() for r in runs):
        from covidct.cli.common import require

        require("mlflow", "mlflow", "compare with MLflow run ids")
        from covidct.reporting.tracking import resolve_run

        runs = [resolve_run(r, args.mlflow or None) for r in runs]
    rows = api.compare(runs, args.split)
    print(table_text(rows))
    csv_path, md_path = write_table(rows, args.out)
    print(f"wrote {csv_path} and {md_path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from covidct import api

    path = api.report(args.run_dir, args.split, args.data_dir)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from covidct.config import EvalConfig

    p = sub.add_parser("evaluate", help="metrics, predictions and figures of a run on a split or an external set")
    p.add_argument(
        "run_dir", type=Path, nargs="+", help="a run folder (runs/<timestamp>-<model>); several: their ensemble"
    )
    config_args(p, EvalConfig, config_file=False)
    p.add_argument(
        "--per-group",
        nargs="?",
        const=DEFAULT_AGGREGATION,
        choices=tuple(AGGREGATIONS),
        metavar="AGGREGATION",
        help="also score each group (a patient's subfolder, a CSV's group column) as one: its slices' scores "
        f"aggregated as covidct predict aggregates a volume (default {DEFAULT_AGGREGATION}); COVID if any slice is",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("threshold", help="choose the decision threshold on val and store it in the checkpoint")
    p.add_argument("run_dir", type=Path, help="a run folder (runs/<timestamp>-<model>)")
    p.add_argument(
        "--choose", required=True, help="youden, youden-bootstrap, sensitivity (at least --min-sensitivity) or a number"
    )
    p.add_argument(
        "--min-sensitivity",
        type=float,
        default=EvalConfig().min_sensitivity,
        help="with --choose sensitivity: the least sensitivity on val (default %(default)s)",
    )
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "last"],
        help="which checkpoint gets the threshold (default %(default)s)",
    )
    p.add_argument("--data-dir", help="override the data folder recorded in the run's config")
    p.add_argument(
        "--on",
        metavar="SET",
        help="choose it on this labelled set instead of val (a site's own "
        "validation data: source name, NAME=FOLDER or a CSV, as for evaluate --on)",
    )
    p.set_defaults(func=cmd_threshold)

    p = sub.add_parser("report", help="one self-contained HTML report of a run (report.html)")
    p.add_argument("run_dir", type=Path, help="a run folder (runs/<timestamp>-<model>)")
    p.add_argument("--split", default="test", help="the split whose figures it shows (default %(default)s)")
    p.add_argument("--data-dir", help="override the data folder recorded in the run's config")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="evaluated runs side by side (screen, CSV and Markdown)")
    p.add_argument("run_dirs", nargs="+", help="run folders or MLflow run ids")
    p.add_argument("--mlflow", nargs="?", const="", metavar="URI", help="tracking URI for run ids (default sqlite)")
    p.add_argument("--split", default="test", help="the split compared (default %(default)s)")
    p.add_argument("--out", default="comparison", help="file stem for .csv and .md (default comparison)")
    p.set_defaults(func=cmd_compare)
