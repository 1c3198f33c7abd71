"""covidct train, cv and crosssource: the flags of a training recipe are built from TrainConfig's fields."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from covidct import DISCLAIMER
from covidct.cli.common import config_args, progress, require, settings_from_args
from covidct.errors import ConfigError


def train_config(args: argparse.Namespace, cls: Any = None) -> Any:
    """Defaults < --config YAML < COVIDCT_DATA_DIR < flags given on the command line (TrainConfig, or another
    settings class such as PretrainConfig)."""
    from covidct.config import TrainConfig

    cls = cls or TrainConfig
    values: dict[str, Any] = cls.from_yaml(args.config).to_dict() if args.config else {}
    if os.environ.get("COVIDCT_DATA_DIR") and getattr(args, "data_dir", None) is None:
        values["data_dir"] = os.environ["COVIDCT_DATA_DIR"]
    return settings_from_args(args, cls, **values)


def cmd_train(args: argparse.Namespace) -> int:
    from covidct import api
    from covidct.cli.evaluate import evaluate_and_print
    from covidct.config import EvalConfig

    if args.resume:
        from covidct.config import TrainConfig
        from covidct.runs import RunDir

        saved = RunDir(Path(args.resume)).config_path
        if not saved.is_file():
            raise ConfigError(f"cannot resume {args.resume}: no config.yaml there; is it a covidct run folder?")
        config = TrainConfig.from_yaml(saved)  # the run continues with its own recipe; other flags are ignored
    else:
        config = train_config(args)
    if args.mlflow is not None:  # checked before minutes of training, not after
        require("mlflow", "mlflow", "--mlflow")
    print(DISCLAIMER, file=sys.stderr)
    run_dir = api.train(config, progress=progress(), run_dir=args.resume or args.run_dir, resume=bool(args.resume))
    from covidct.training.engine import global_rank

    if global_rank() != 0:  # the other processes of a distributed run: rank 0 evaluates and reports
        return 0
    print(f"run folder: {run_dir}")
    if args.evaluate:
        evaluate_and_print(run_dir, EvalConfig(split=args.evaluate))
    for name in args.evaluate_on or []:
        evaluate_and_print(run_dir, EvalConfig(on=name))
    if args.report:
        print(f"wrote {api.report(run_dir, args.evaluate or 'test')}")
    if args.mlflow is not None:
        from covidct.reporting.tracking import DEFAULT_URI, log_run

        run_id = log_run(run_dir, args.mlflow or None)
        print(f"logged to MLflow ({args.mlflow or DEFAULT_URI}) as run {run_id}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from covidct import api
    from covidct.fileio.tables import number_text

    config = train_config(args)
    print(DISCLAIMER, file=sys.stderr)
    cv = api.cross_validate(config, args.folds, progress(), not args.no_group_duplicates, args.student)
    summary = cv.summary
    n = number_text  # an AUC is undefined (null in cv.json) on a fold whose validation holds one class
    for f in summary["folds"]:
        print(f"fold {f['fold']}: val acc {n(f['val_acc'])}, val AUC {n(f['val_auc'])} ({f['n_val']} images)")
    acc, auc, oof = summary["val_acc"], summary["val_auc"], summary["out_of_fold"]
    print(f"val acc {n(acc['mean'])} +- {n(acc['sd'])}, val AUC {n(auc['mean'])} +- {n(auc['sd'])} (mean +- sd)")
    print(f"out of fold ({oof['n']} images): acc {n(oof['accuracy'])}, AUC {n(oof['auc'])}")
    if "youden_threshold" in oof:
        print(
            f"out-of-fold operating point (Youden's J): {oof['youden_threshold']:.4f}; every labelled image as one "
            f"training split: {cv.every_labelled} (train on it with --monitor last)"
        )
    print(f"cv folder: {cv.folder} (fold runs under fold-*/run; evaluate them together as an ensemble)")
    if cv.student is not None:
        print(
            f"student: {cv.student} (one network on every labelled image, distilled from the folds, last epoch; "
            "its operating point the out-of-fold one)"
        )
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from covidct import api
    from covidct.config import PretrainConfig

    if args.resume:
        from covidct.runs import RunDir

        saved = RunDir(Path(args.resume)).config_path
        if not saved.is_file():
            raise ConfigError(f"cannot resume {args.resume}: no config.yaml there; is it a covidct pretrain run?")
        config = PretrainConfig.from_yaml(saved)
    else:
        config = train_config(args, PretrainConfig)
    print(DISCLAIMER, file=sys.stderr)
    run = api.pretrain(config, progress(), run_dir=args.resume, resume=bool(args.resume))
    print(f"pretrain run folder: {run} (fine-tune from it: covidct train --model {config.model} --init {run})")
    return 0


def cmd_crosssource(args: argparse.Namespace) -> int:
    from covidct import api

    config = train_config(args)
    if not config.sources or len(config.sources) < 2:
        raise ConfigError("crosssource needs at least two --source")
    print(DISCLAIMER, file=sys.stderr)
    out = api.cross_source(config, args.out_dir, args.seeds, args.bootstrap, progress())
    if args.seeds:
        print((out / "seeds.md").read_text())
        print(f"wrote {out}/seeds.csv, seeds.md, seeds.json and one matrix per seed under {out}/seed-N/")
        return 0
    print((out / "matrix.md").read_text())
    print(f"wrote {out}/matrix.csv, matrix.md, matrix.png and one run folder per training under {out}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from covidct import api
    from covidct.config import CurvePlan

    site = api.load_site(args.run_dir, args.source, args.allow_overlap, not args.no_group_duplicates)
    print(
        f"site {site.name}: {len(site.samples)} images in {len(set(site.groups.tolist()))} groups "
        f"(per class {site.group_counts()})"
    )
    if args.curve:
        out = Path(args.out) if args.out else args.run_dir / f"curve-{site.name}"
        plan = CurvePlan(tuple(args.curve), args.draws, args.seed, args.strategies, args.imagenet_strategies)
        from covidct.fileio.tables import interval_text

        for r in api.learning_curve(args.run_dir, site, plan, out):
            interval, worst = interval_text(r["auc_ci"]), r["auc_worst"]
            print(f"{r['strategy']:>14} k={r['k']:<3} AUC {r['auc']:.3f} {interval} (worst {worst:.3f})")
        print(f"wrote {out / 'curve.md'}, curve.csv, curve.png")
        return 0
    adapted = api.adapt(args.run_dir, site, args.strategy, args.out)
    print(adapted.record["text"])
    print(f"adapted run folder: {adapted.run} (predict, serve, evaluate and export take it)")
    return 0


def register_adapt(sub: argparse._SubParsersAction) -> None:
    from covidct.config import DEFAULT_DRAWS, DEFAULT_STRATEGY, IMAGENET_STRATEGIES, STRATEGIES, STRATEGY_TEXT

    p = sub.add_parser("adapt", help="a site's labelled patients: learning curve, and the model adapted to the site")
    p.add_argument("run_dir", type=Path, help="the run folder of the model to adapt")
    p.add_argument(
        "--source",
        required=True,
        metavar="SITE",
        help="the site's labelled images: NAME=DIR, a folder or a CSV with a group column (groups = patients)",
    )
    p.add_argument(
        "--curve",
        type=int,
        nargs="+",
        metavar="K",
        help="measure the learning curve instead: K groups per class drawn, the rest scored (e.g. 1 2 5 10 20)",
    )
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help=f"draws per K (default {DEFAULT_DRAWS})")
    strategies = "; ".join(f"{k}: {v}" for k, v in STRATEGY_TEXT.items())
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULT_STRATEGY,
        help=f"how the adapted model is made: {strategies} (default %(default)s)",
    )
    p.add_argument(
        "--strategies",
        nargs="+",
        choices=STRATEGIES,
        default=list(STRATEGIES),
        metavar="S",
        help="the curve's strategies (default: all, %(default)s)",
    )
    p.add_argument(
        "--imagenet-strategies",
        nargs="*",
        choices=STRATEGIES,
        default=list(IMAGENET_STRATEGIES),
        metavar="S",
        help="the same k groups from ImageNet weights alone, by these strategies (default "
        "%(default)s; none: no ImageNet baseline)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the draws of groups (default %(default)s)")
    p.add_argument("--out", help="curve: its folder (default RUN/curve-SITE); model: the parent folder (default RUN's)")
    p.add_argument("--allow-overlap", action="store_true", help="accept site images the run trained on")
    p.add_argument("--no-group-duplicates", action="store_true", help="do not join near-duplicate images' groups")
    p.set_defaults(func=cmd_adapt)


def register(sub: argparse._SubParsersAction) -> None:
    register_adapt(sub)
    p = sub.add_parser("train", help="fine-tune a backbone; keeps the best checkpoint on validation")
    config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint, with its config")
    p.add_argument("--run-dir", help="the run folder to create (default OUT/<time>-<model>); torchrun/SLURM: set it")
    p.add_argument("--evaluate", metavar="SPLIT", help="then evaluate the best checkpoint on SPLIT (e.g. test)")
    p.add_argument(
        "--evaluate-on",
        action="append",
        metavar="SET",
        help="then also evaluate on this external set (a source, folder or CSV); repeatable",
    )
    p.add_argument("--report", action="store_true", help="then write report.html (evaluating on test if needed)")
    p.add_argument(
        "--mlflow", nargs="?", const="", metavar="URI", help="then log the run to MLflow (default sqlite:///mlruns.db)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", help="k-fold cross-validation on train+val (one run per fold; test untouched)")
    config_args(p)
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--no-group-duplicates", action="store_true", help="do not keep near-duplicate images in one fold")
    p.add_argument(
        "--student",
        action="store_true",
        help="then train one network on every labelled image, distilled from the fold runs, for the fixed "
        "schedule (its last epoch), with the out-of-fold operating point (benchmarks/ACCURACY.md)",
    )
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("pretrain", help="self-supervised pretraining on unlabelled CT (lightly: SimCLR, MoCo v2, BYOL)")
    from covidct.config import PretrainConfig

    config_args(p, PretrainConfig)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a pretrain run from its last checkpoint")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "crosssource",
        help="leave-one-source-out: train on each source alone and on all but one; the train x test-source matrix",
    )
    config_args(p)
    p.add_argument("--out-dir", default="crosssource", help="folder for the runs and the matrix (default crosssource/)")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples per evaluation (default 0: none)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="one matrix per seed (OUT/seed-N/) and every cell's mean and spread over them (seeds.md); "
        "a seed alone moves a held-out cell by up to 0.14 AUC, so compare recipes over seeds",
    )
    p.set_defaults(func=cmd_crosssource)
