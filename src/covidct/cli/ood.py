"""covidct ood: the out-of-distribution detector of a run (fitted at the end of training since it exists)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_ood_fit(args: argparse.Namespace) -> int:
    from covidct import api
    from covidct.ood.fit import DetectorRecipe

    d = api.fit_detector(args.run_dir, DetectorRecipe(args.method, args.percentile), args.data_dir, args.site)
    if d.get("per_source"):
        held, flagged = "every source's held-out images", "the validation images"
    elif d["n_val"]:
        held, flagged = f"{d['n_val']} validation images", "the validation images"
    else:  # a run trained on every labelled image
        held, flagged = "the training images' scores out of fold by group (no validation split)", "them"
    print(
        f"out-of-distribution detector ({d['method']}) fitted on {d['n_train']} training images; threshold "
        f"{d['threshold']:.4g} = percentile {d['percentile']:g} of {held} ({d['val_flagged']:.1%} of "
        f"{flagged} flagged); {d['fit_seconds']} s"
    )
    for part in d.get("per_source", []):  # one detector per training source
        print(
            f"  {part['source']}: {part['n_train']} images, threshold on {part['threshold_on']} "
            f"({part['flagged']:.1%} of its {part['n_val']} held-out images flagged)"
        )
    from covidct.runs import RunDir

    run = RunDir(Path(args.run_dir))
    exported = (run.export_dir / "model.json").is_file()
    print(f"wrote {run.ood_dir}" + (" and the run's export" if exported else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from covidct.ood.detector import DEFAULT_PERCENTILE, METHODS
    from covidct.ood.fit import DEFAULT_METHOD

    p = sub.add_parser("ood", help="the out-of-distribution detector of a model (does an input look like training?)")
    ood_sub = p.add_subparsers(dest="ood_command", metavar="ACTION", required=True)
    f = ood_sub.add_parser("fit", help="fit (or refit) a run's detector: training images, threshold on validation")
    f.add_argument("run_dir", type=Path, help="a run folder (runs/<timestamp>-<model>)")
    f.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS, help=f"default {DEFAULT_METHOD}")
    f.add_argument(
        "--percentile",
        type=float,
        default=DEFAULT_PERCENTILE,
        help="threshold: this percentile of the validation scores (default 95: ~5%% flagged)",
    )
    f.add_argument("--data-dir", help="the run's data folder, if it moved")
    f.add_argument(
        "--site",
        metavar="NAME=PATH",
        help="an adapted run's site images (default: where its record says they are); refused for a "
        "run that was not adapted",
    )
    f.set_defaults(func=cmd_ood_fit)
