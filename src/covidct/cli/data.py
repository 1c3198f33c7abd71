"""covidct data download|info|audit|sources, and covidct samples."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from covidct.cli.common import data_args, progress

if TYPE_CHECKING:
    from covidct.data.datasets import SplitData


def cmd_data_download(args: argparse.Namespace) -> int:
    from covidct import api

    dest = api.download(args.source, args.dest, args.force, args.base_url, progress())
    if args.source == "sars-cov-2-ct":
        print(f"sars-cov-2-ct is complete in {dest} (1,252 COVID + 1,229 non-COVID slices, grey PNG)")
    else:
        print(f"COVID-CT is complete in {dest} (349 COVID + 397 non-COVID images; split 425/118/203)")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from covidct.data.audit.info import dataset_info, format_info

    data = load_data(args)
    info = dataset_info(data, check_images=not args.no_images)
    print(f"source: {data.source}")
    print(format_info(info, data.class_names))
    for note in data.notes:
        print(f"note: {note}")
    return 1 if info.unreadable or info.overlap else 0


def cmd_data_audit(args: argparse.Namespace) -> int:
    import time

    from covidct import api

    start = time.perf_counter()
    sources = getattr(args, "sources", None)
    report = api.audit(args.data_dir, args.data_csv, sources, args.out, progress())
    out = args.out
    for warning in report.warnings:
        print(warning)
    for key, value in report.summary().items():
        print(f"{key.replace('_', ' ')}: {value}")
    for p in [p for p in report.near_duplicates if p["cross_split"]][:10]:
        print(f"across splits: {p['a']} ({p['split_a']}, {p['class_a']}) ~ {p['b']} ({p['split_b']}, {p['class_b']})")
    print(f"wrote {out}/audit.md, audit.json, near_duplicates.csv/.png in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_samples(args: argparse.Namespace) -> int:
    from covidct.data.audit.figures import sample_grid_figure
    from covidct.data.audit.samples import pick_samples
    from covidct.fileio.plotting import save_figure

    data = load_data(args)
    images = pick_samples(data, args.n, args.seed, args.split)
    path = save_figure(sample_grid_figure(images), args.out)
    print(f"wrote {path}")
    return 0


def cmd_data_sources(args: argparse.Namespace) -> int:
    from covidct.data.sources import known_sources, source_dir

    for info in known_sources():
        where = source_dir(info.name)
        state = "present" if where.is_dir() else "not found"
        counts = ", ".join(f"{c} {n}" for c, n in info.counts.items())
        print(f"{info.name}: {info.title}")
        print(f"  citation: {info.citation}")
        print(f"  licence:  {info.licence}")
        print(f"  classes:  {counts} images")
        print(f"  groups:   {info.groups}")
        print(f"  get it:   {info.how_to_get}")
        print(f"  notes:    {info.notes}")
        print(f"  here:     {where} ({state}; set $COVIDCT_DATA_ROOT or use NAME=PATH)")
    print("your own: a class-per-folder tree or a CSV path,label[,split][,group][,source] (--source PATH)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="download, list, inspect and audit data sources")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = data_sub.add_parser("download", help="download a source, check it and install it (nothing half-written)")
    p.add_argument("--source", default="covid-ct", help="covid-ct (default) or sars-cov-2-ct")
    p.add_argument("--dest", help="target folder (default: the source's folder, see covidct data sources)")
    p.add_argument("--base-url", default=None, help="covid-ct: a mirror of the UCSD-AI4H/COVID-CT raw files")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_data_download)

    p = data_sub.add_parser("sources", help="the known sources: citation, licence, classes, groups, how to get them")
    p.set_defaults(func=cmd_data_sources)

    p = data_sub.add_parser("info", help="counts per split and class, image modes and sizes, broken files")
    data_args(p)
    p.add_argument("--no-images", action="store_true", help="count only; do not open every image")
    p.set_defaults(func=cmd_data_info)

    p = data_sub.add_parser("audit", help="shortcuts, duplicates within and across sources, shortcut classifier")
    data_args(p)
    p.add_argument("--out", default="audit", help="output folder (default audit/)")
    p.set_defaults(func=cmd_data_audit)

    p = sub.add_parser("samples", help="a grid of random COVID and non-COVID images")
    data_args(p)
    p.add_argument("--n", type=int, default=5, help="images per class (default 5)")
    p.add_argument("--out", default="samples.png", help="PNG file to write (default samples.png)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random pick (default %(default)s)")
    p.add_argument("--split", default=None, help="draw from one split only (train, val or test)")
    p.set_defaults(func=cmd_samples)


def load_data(args: argparse.Namespace) -> SplitData:
    """The data a data command looks at: --source(s), else --data-csv / --data-dir."""
    from covidct.config import resolve_data_dir
    from covidct.data.datasets import load_splits
    from covidct.data.sources import load_sources

    if getattr(args, "sources", None):
        return load_sources(args.sources)
    return load_splits(resolve_data_dir(args.data_dir), args.data_csv)
