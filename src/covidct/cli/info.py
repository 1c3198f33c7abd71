"""covidct bench, models and study: the speed of this machine, the backbones covidct can build, and a run's figures
beside the seed study's."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_bench(args: argparse.Namespace) -> int:
    import tempfile

    from covidct.config import resolve_data_dir
    from covidct.fileio import write_json, write_text
    from covidct.studies.bench import DEFAULT_MODELS, bench_markdown, run_bench

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


def cmd_models(args: argparse.Namespace) -> int:
    from covidct.models import backbone_specs

    for spec in backbone_specs():
        name = f"{spec.name}:<name>" if spec.prefix else spec.name
        size = "" if spec.prefix else f", input {spec.preprocessing.input_size}"
        print(f"{name:<20} weights: {spec.weights}{size}" + (f"; {spec.notes}" if spec.notes else ""))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from covidct import api

    print(api.study(args.run_dir))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="a run's test figures beside the seed study's published table")
    p.add_argument("run_dir", type=Path, help="a run folder evaluated on the test split")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("bench", help="training, data and inference speed here, beside the naive baseline")
    p.add_argument("--models", nargs="+", help="backbones (default: efficientnet_lite0 vgg19_bn vgg16 resnet50)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one model: checks the benchmark runs (CI)")
    p.add_argument("--data-dir", help="real images for the data-pipeline figure (default: the usual data folder)")
    p.add_argument("--out", default="benchmarks/latest", help="folder for bench.md and bench.json")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("models", help="list the backbones covidct can build")
    p.set_defaults(func=cmd_models)
