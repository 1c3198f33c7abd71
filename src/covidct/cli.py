"""The command line: parses arguments and calls the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from covidct import DISCLAIMER, __version__
from covidct.data.medical import LUNG_WINDOW
from covidct.errors import ConfigError, CovidCTError, TrainingInterrupted


def _progress() -> bool:
    return not os.environ.get("COVIDCT_NO_PROGRESS")


def cmd_data_download(args: argparse.Namespace) -> int:
    from covidct.config import resolve_data_dir
    from covidct.data.download import download_dataset

    dest = download_dataset(resolve_data_dir(args.dest), base_url=args.base_url, force=args.force, progress=_progress())
    print(f"COVID-CT is complete in {dest} (349 COVID + 397 non-COVID images; split 425/118/203)")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from covidct.config import resolve_data_dir
    from covidct.data.datasets import load_splits
    from covidct.data.info import dataset_info, format_info

    data = load_splits(resolve_data_dir(args.data_dir), args.data_csv)
    info = dataset_info(data, check_images=not args.no_images)
    print(f"source: {data.source}")
    print(format_info(info, data.class_names))
    return 1 if info.unreadable or info.overlap else 0


def cmd_data_audit(args: argparse.Namespace) -> int:
    import time

    from covidct.config import resolve_data_dir
    from covidct.data.audit import audit_dataset, write_audit
    from covidct.data.datasets import load_splits

    start = time.perf_counter()
    data = load_splits(resolve_data_dir(args.data_dir), args.data_csv)
    report = audit_dataset(data, progress=_progress())
    out = write_audit(report, args.out)
    for warning in report.warnings:
        print(warning)
    for key, value in report.summary().items():
        print(f"{key.replace('_', ' ')}: {value}")
    for p in [p for p in report.near_duplicates if p["cross_split"]][:10]:
        print(f"across splits: {p['a']} ({p['split_a']}, {p['class_a']}) ~ {p['b']} ({p['split_b']}, {p['class_b']})")
    print(f"wrote {out}/audit.md, audit.json, near_duplicates.csv/.png in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_samples(args: argparse.Namespace) -> int:
    from covidct.config import resolve_data_dir
    from covidct.data.datasets import load_splits
    from covidct.reporting import sample_grid_figure, save_figure
    from covidct.samples import pick_samples

    data = load_splits(resolve_data_dir(args.data_dir), args.data_csv)
    images = pick_samples(data, args.n, args.seed, args.split)
    path = save_figure(sample_grid_figure(images), args.out)
    print(f"wrote {path}")
    return 0


TRAIN_FLAGS = (
    "model", "epochs", "lr", "batch_size", "patience", "seed", "out", "monitor", "weights", "precision",
    "num_workers", "weight_decay", "label_smoothing", "warmup_epochs", "data_csv", "accelerator", "augment",
    "ema_decay", "cache_dir", "backbone_lr_scale", "devices", "num_nodes", "input_size",
)  # fmt: skip


def train_config(args: argparse.Namespace) -> Any:
    """Defaults < --config YAML < COVIDCT_DATA_DIR < flags given on the command line."""
    from covidct.config import TrainConfig

    values: dict[str, Any] = TrainConfig.from_yaml(args.config).to_dict() if args.config else {}
    if os.environ.get("COVIDCT_DATA_DIR"):
        values["data_dir"] = os.environ["COVIDCT_DATA_DIR"]
    if args.data_dir:
        values["data_dir"] = args.data_dir
    values.update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
    if args.no_pretrained:
        values["pretrained"] = False
    if args.grayscale is not None:
        values["grayscale"] = args.grayscale
    if args.no_cache:
        values["cache_images"] = False
    if args.no_channels_last:
        values["channels_last"] = False
    if args.fp32_slow_layers is not None:
        values["fp32_slow_layers"] = args.fp32_slow_layers
    if args.no_tensorboard:
        values["tensorboard"] = False
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    from covidct.training import train

    if args.resume:
        from covidct.config import TrainConfig

        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"cannot resume {args.resume}: no config.yaml there; is it a covidct run folder?")
        config = TrainConfig.from_yaml(saved)  # the run continues with its own recipe; other flags are ignored
    else:
        config = train_config(args)
    print(DISCLAIMER, file=sys.stderr)
    run_dir = train(config, progress=_progress(), run_dir=args.resume or args.run_dir, resume=bool(args.resume))
    from covidct.training import global_rank

    if global_rank() != 0:  # the other processes of a distributed run: rank 0 evaluates and reports
        return 0
    print(f"run folder: {run_dir}")
    if args.evaluate:
        _evaluate_and_print(run_dir, args.evaluate, "best", None, None, None, 2000, 0.95)
    if args.report:
        from covidct.report import build_report

        print(f"wrote {build_report(run_dir, args.evaluate or 'test')}")
    if args.mlflow is not None:
        from covidct.tracking import DEFAULT_URI, log_run

        run_id = log_run(run_dir, args.mlflow or None)
        print(f"logged to MLflow ({args.mlflow or DEFAULT_URI}) as run {run_id}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    import json

    from covidct.cv import run_cv

    config = train_config(args)
    print(DISCLAIMER, file=sys.stderr)
    cv_dir = run_cv(config, args.folds, progress=_progress(), group_duplicates=not args.no_group_duplicates)
    summary = json.loads((cv_dir / "cv.json").read_text())
    for f in summary["folds"]:
        print(f"fold {f['fold']}: val acc {f['val_acc']:.3f}, val AUC {f['val_auc']:.3f} ({f['n_val']} images)")
    acc, auc, oof = summary["val_acc"], summary["val_auc"], summary["out_of_fold"]
    print(f"val acc {acc['mean']:.3f} +- {acc['sd']:.3f}, val AUC {auc['mean']:.3f} +- {auc['sd']:.3f} (mean +- sd)")
    print(f"out of fold ({oof['n']} images): acc {oof['accuracy']:.3f}, AUC {oof['auc']:.3f}")
    print(f"cv folder: {cv_dir} (fold runs under fold-*/run; evaluate them together as an ensemble)")
    return 0


def _evaluate_and_print(
    run_dir: Path,
    split: str,
    checkpoint: str,
    data_dir: Any,
    threshold: Any,
    out: Any,
    n_boot: int,
    min_sens: float,
    calibrate: bool = False,
    tta: bool = False,
) -> None:
    from covidct.evaluation import evaluate_run, metrics_table

    result = evaluate_run(
        run_dir, split, checkpoint, data_dir, threshold, out, n_boot, min_sens, calibrate=calibrate, tta=tta
    )
    cal = result["calibration"]
    line = f"calibration: ECE {cal['ece']:.3f}"
    if "temperature" in cal:
        line += f"; temperature {cal['temperature']:.2f} (fitted on val) -> ECE {cal['ece_calibrated']:.3f}"
    print(metrics_table(result))
    print(line)
    where = Path(out) if out else Path(run_dir if not isinstance(run_dir, list) else run_dir[0]) / f"eval-{split}"
    print(f"wrote metrics, predictions and figures to {where}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    runs = args.run_dir if len(args.run_dir) > 1 else args.run_dir[0]
    _evaluate_and_print(
        runs, args.split, args.checkpoint, args.data_dir, args.threshold, args.out,
        args.bootstrap, args.min_sensitivity, args.calibrate, args.tta,
    )  # fmt: skip
    return 0


def cmd_threshold(args: argparse.Namespace) -> int:
    from covidct.evaluation import store_threshold

    r = store_threshold(args.run_dir, args.choose, args.min_sensitivity, args.checkpoint, args.data_dir)
    where = f"chosen on val by {r['rule']}" if r["chosen_on"] else "given"
    print(f"threshold {r['threshold']:.4f} ({where}) stored in {args.run_dir}/checkpoints/{r['checkpoint']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from covidct.export import export_run

    for path in export_run(args.run_dir, args.format, args.out, args.data_dir):
        print(f"wrote {path}")
    return 0


def _window(text: str) -> tuple[float, float]:
    try:
        centre, width = (float(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"window must be CENTRE/WIDTH in HU, e.g. -600/1500; got {text!r}") from None
    if width <= 0:
        raise argparse.ArgumentTypeError(f"window width must be > 0, got {text!r}")
    return centre, width


def cmd_predict(args: argparse.Namespace) -> int:
    from covidct.fileio import write_csv
    from covidct.prediction import VOLUME_AGGREGATION, expand_inputs, load_model, predict_inputs

    print(DISCLAIMER, file=sys.stderr)
    model = load_model(args.model)
    paths = expand_inputs(args.inputs)
    rows = predict_inputs(model, paths, args.threshold, args.window, Path(args.cam) if args.cam else None)
    write_csv(args.out, rows)
    for r in rows:
        where = f"{r['path']}" + (f" [{r['slice']}]" if r["slice"] != "" else "")
        print(f"{where}: score {r['score']:.3f} -> {r['label']} (threshold {r['threshold']:.3f})")
    if any(r["slice"] == "volume" for r in rows):
        print(f"volume score: {VOLUME_AGGREGATION}")
    print(f"wrote {args.out}" + (f" and Grad-CAM overlays in {args.cam}" if args.cam else ""))
    print(DISCLAIMER, file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from covidct.serving import serve

    print(DISCLAIMER, file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (args.api_key or os.environ.get("COVIDCT_API_KEY")):
        print(
            f"warning: serving on {args.host} without an API key; anyone who can reach it can use it", file=sys.stderr
        )
    serve(args.model, args.host, args.port, args.api_key)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import tempfile

    from covidct.bench import DEFAULT_MODELS, bench_markdown, run_bench
    from covidct.config import resolve_data_dir
    from covidct.fileio import write_json, write_text

    models = args.models or (["efficientnet_lite0"] if args.quick else list(DEFAULT_MODELS))
    with tempfile.TemporaryDirectory() as tmp:
        results = run_bench(models, args.quick, resolve_data_dir(args.data_dir), Path(tmp))
    text = bench_markdown(results)
    print(text)
    out = Path(args.out)
    write_json(out / "bench.json", results)
    write_text(out / "bench.md", text)
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from covidct.report import build_report

    path = build_report(args.run_dir, args.split, args.data_dir)
    print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from covidct.evaluation import compare_runs
    from covidct.reporting import table_text, write_table

    runs = args.run_dirs
    if args.mlflow is not None or any(not Path(r).exists() for r in runs):
        from covidct.tracking import resolve_run

        runs = [resolve_run(r, args.mlflow or None) for r in runs]
    rows = compare_runs(runs, args.split)
    print(table_text(rows))
    csv_path, md_path = write_table(rows, args.out)
    print(f"wrote {csv_path} and {md_path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from covidct.models import available_models

    print("\n".join(available_models()))
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    """The flags of a training recipe, shared by train and cv."""
    _data_args(p)
    p.add_argument("--config", help="a YAML config (e.g. a saved run's config.yaml); flags override it")
    p.add_argument("--model", help="backbone (default efficientnet_lite0); see: covidct models")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 30)")
    p.add_argument("--lr", type=float, help="peak learning rate of AdamW (default 3e-4)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 10)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="parent folder of run folders (default runs/)")
    p.add_argument("--monitor", choices=["val_acc", "val_auc", "val_loss"], help="best-checkpoint criterion")
    p.add_argument("--weights", help="local ImageNet weight file (.pth or .safetensors) for the backbone")
    p.add_argument("--no-pretrained", action="store_true", help="random initialisation (only when asked)")
    p.add_argument("--precision", choices=["auto", "32", "bf16-mixed", "16-mixed"])
    p.add_argument("--accelerator", help="auto, cpu or gpu (default auto)")
    p.add_argument("--num-workers", type=int, help="data loader workers (default min(2, cores))")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--input-size", type=int, help="side of the model's input in pixels (default: the backbone's)")
    p.add_argument("--backbone-lr-scale", type=float, help="backbone lr = lr x this, head lr = lr (default 1)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--augment", choices=["study", "ct"], help="study: crop+flip; ct: + affine, brightness/contrast")
    p.add_argument(
        "--grayscale", action=argparse.BooleanOptionalAction, help="every image to grey first (removes colour mode)"
    )
    p.add_argument("--ema-decay", type=float, help="EMA of weights per step (e.g. 0.98; default 0: off)")
    p.add_argument("--cache-dir", help="keep decoded images here across runs (keyed by file content)")
    p.add_argument("--no-cache", action="store_true", help="decode images from disk every epoch")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--devices", type=int, help="devices (GPUs, or CPU processes) per node; > 1: DDP (default 1)")
    p.add_argument("--num-nodes", type=int, help="machines taking part (default 1); see README 'Multi-node'")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs in RUN_DIR/tensorboard")
    p.add_argument(
        "--fp32-slow-layers",
        action=argparse.BooleanOptionalAction,
        help="under bf16 on CPU, keep the depthwise convs whose bf16 backward is slow in fp32 (default on)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidct",
        description=f"Chest CT COVID-19 classifiers: train, evaluate, compare. {DISCLAIMER}",
    )
    parser.add_argument("--version", action="version", version=f"covidct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="download and inspect the COVID-CT dataset")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = data_sub.add_parser("download", help="download the official zips and split files, check and install them")
    p.add_argument("--dest", help="target folder (default: $COVIDCT_DATA_DIR or data/covid-ct)")
    p.add_argument("--base-url", default=None, help="a mirror of the UCSD-AI4H/COVID-CT repository's raw files")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_data_download)

    p = data_sub.add_parser("info", help="counts per split and class, image modes and sizes, broken files")
    _data_args(p)
    p.add_argument("--no-images", action="store_true", help="count only; do not open every image")
    p.set_defaults(func=cmd_data_info)

    p = data_sub.add_parser("audit", help="shortcuts, exact and near-duplicates across splits, problem images")
    _data_args(p)
    p.add_argument("--out", default="audit", help="output folder (default audit/)")
    p.set_defaults(func=cmd_data_audit)

    p = sub.add_parser("samples", help="a grid of random COVID and non-COVID images")
    _data_args(p)
    p.add_argument("--n", type=int, default=5, help="images per class (default 5)")
    p.add_argument("--out", default="samples.png", help="PNG file to write (default samples.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default=None, help="draw from one split only (train, val or test)")
    p.set_defaults(func=cmd_samples)

    p = sub.add_parser("train", help="fine-tune a backbone; keeps the best checkpoint on validation")
    _train_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint, with its config")
    p.add_argument("--run-dir", help="the run folder to create (default OUT/<time>-<model>); torchrun/SLURM: set it")
    p.add_argument("--evaluate", metavar="SPLIT", help="then evaluate the best checkpoint on SPLIT (e.g. test)")
    p.add_argument("--report", action="store_true", help="then write report.html (evaluating on test if needed)")
    p.add_argument(
        "--mlflow", nargs="?", const="", metavar="URI", help="then log the run to MLflow (default sqlite:///mlruns.db)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", help="k-fold cross-validation on train+val (one run per fold; test untouched)")
    _train_args(p)
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--no-group-duplicates", action="store_true", help="do not keep near-duplicate images in one fold")
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("evaluate", help="metrics, predictions and figures of a run on a split")
    p.add_argument(
        "run_dir", type=Path, nargs="+", help="a run folder (runs/<timestamp>-<model>); several: their ensemble"
    )
    p.add_argument("--split", default="test", help="train, val or test (default test)")
    p.add_argument("--tta", action="store_true", help="average each image's score with its left-right mirror's")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--data-dir", help="override the data folder recorded in the run's config")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model's, 0.5)")
    p.add_argument("--out", help="output folder (default RUN_DIR/eval-SPLIT)")
    p.add_argument("--calibrate", action="store_true", help="fit temperature scaling on val; report ECE before/after")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals (0: none)")
    p.add_argument(
        "--min-sensitivity", type=float, default=0.95, help="the 'sensitivity at least S' operating point (on val)"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("threshold", help="choose the decision threshold on val and store it in the checkpoint")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--choose", required=True, help="youden, sensitivity (at least --min-sensitivity) or a number")
    p.add_argument("--min-sensitivity", type=float, default=0.95)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--data-dir", help="override the data folder recorded in the run's config")
    p.set_defaults(func=cmd_threshold)

    p = sub.add_parser("export", help="export the best model as safetensors + JSON card, or as verified ONNX")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--format", default="safetensors", choices=["safetensors", "onnx"])
    p.add_argument("--out", help="output folder (default RUN_DIR/export)")
    p.add_argument("--data-dir", help="data for the ONNX check (default: the run's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="score images, DICOM, DICOM series and NIfTI volumes (research use only)")
    p.add_argument("model", help="export folder (model.safetensors/.onnx + model.json), model file or run folder")
    p.add_argument("inputs", nargs="+", help="files, folders (recursive; a folder of DICOM files is a series), globs")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    p.add_argument("--cam", metavar="DIR", help="also save Grad-CAM overlays (PNG) here")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    p.add_argument(
        "--window", type=_window, default=LUNG_WINDOW, help="CT window CENTRE/WIDTH in HU (default -600/1500)"
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="web app and REST API for one model (research use only)")
    p.add_argument("model", help="export folder (model.safetensors [+ model.onnx] + model.json) or run folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require this key in header X-API-Key on /api/ (default: $COVIDCT_API_KEY)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="training, data and inference speed here, beside the naive baseline")
    p.add_argument("--models", nargs="+", help="backbones (default: efficientnet_lite0 vgg19_bn vgg16 resnet50)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one model: checks the benchmark runs (CI)")
    p.add_argument("--data-dir", help="real images for the data-pipeline figure (default: the usual data folder)")
    p.add_argument("--out", default="benchmarks/latest", help="folder for bench.md and bench.json")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="one self-contained HTML report of a run (report.html)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", help="override the data folder recorded in the run's config")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="evaluated runs side by side (screen, CSV and Markdown)")
    p.add_argument("run_dirs", nargs="+", help="run folders or MLflow run ids")
    p.add_argument("--mlflow", nargs="?", const="", metavar="URI", help="tracking URI for run ids (default sqlite)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="comparison", help="file stem for .csv and .md (default comparison)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("models", help="list the backbones covidct can build")
    p.set_defaults(func=cmd_models)
    return parser


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="dataset folder (default: $COVIDCT_DATA_DIR, else data/covid-ct)")
    p.add_argument("--data-csv", help="a CSV of path,label[,split] instead of the official layout")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"covidct: {e}", file=sys.stderr)
        return 130
    except CovidCTError as e:
        print(f"covidct: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covidct: interrupted", file=sys.stderr)
        return 130
