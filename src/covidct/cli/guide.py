"""What `covidct` and `covidct --help` show first: the commands grouped by what a user does, each group with one
example, and one example on every command's own --help. Written once here; build_parser applies it, and
tests/integration/test_cli.py checks that every command is in one group and has an example."""

from __future__ import annotations

import argparse

START_HERE = (
    "start here: make demo (the study on COVID-CT, about 11 minutes on 2 cores); "
    "or covidct data download, then covidct train"
)

# (what a user does, one example, the commands)
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "reproduce the study",
        "covidct train --config configs/default.yaml --evaluate test --report",
        ("train", "study", "report", "samples", "models"),
    ),
    (
        "evaluate and compare",
        "covidct evaluate runs/RUN --on sars-cov-2-ct",
        ("evaluate", "threshold", "compare", "cv", "crosssource"),
    ),
    (
        "use at a site",
        "covidct predict runs/RUN/export scans/ --out predictions.csv",
        ("predict", "serve", "adapt", "export", "ood"),
    ),
    ("data", "covidct data download --dest data/covid-ct", ("data",)),
    ("operate", "covidct bench", ("bench", "pretrain")),
)

EXAMPLES = {
    "train": "covidct train --config configs/default.yaml --data-dir data/covid-ct --evaluate test --report",
    "study": "covidct study runs/RUN",
    "report": "covidct report runs/RUN --split test",
    "samples": "covidct samples --n 5 --out samples.png",
    "models": "covidct models",
    "evaluate": "covidct evaluate runs/RUN --split test   (or --on sars-cov-2-ct=DIR: a set it never trained on)",
    "threshold": "covidct threshold runs/RUN --choose youden",
    "compare": "covidct compare runs/RUN_A runs/RUN_B --out comparison",
    "cv": "covidct cv --config configs/default.yaml --folds 5",
    "crosssource": "covidct crosssource --source covid-ct --source sars-cov-2-ct --out-dir crosssource",
    "predict": "covidct predict runs/RUN/export scans/ patient7/ --out predictions.csv --cam cams/",
    "serve": "covidct serve runs/RUN/export --port 8000",
    "adapt": "covidct adapt runs/RUN --source hospital=site.csv",
    "export": "covidct export runs/RUN",
    "ood": "covidct ood fit runs/RUN",
    "ood fit": "covidct ood fit runs/RUN",
    "data": "covidct data download --dest data/covid-ct",
    "data download": "covidct data download --dest data/covid-ct",
    "data sources": "covidct data sources",
    "data info": "covidct data info --data-dir data/covid-ct",
    "data audit": "covidct data audit --data-dir data/covid-ct --out audit/",
    "bench": "covidct bench",
    "pretrain": "covidct pretrain --data-dir data/covid-ct --epochs 100",
}


def overview(parser: argparse.ArgumentParser, commands: dict[str, argparse.ArgumentParser]) -> str:
    """The grouped list of commands, with each command's one-line help and each group's example."""
    helps = {a.dest: a.help or "" for a in parser._subparsers._group_actions[0]._choices_actions}  # argparse's own
    lines = [START_HERE, ""]
    for title, example, names in GROUPS:
        lines.append(f"{title}:")
        lines += [f"  {name:<12} {helps.get(name, '')}" for name in names if name in commands]
        lines += [f"  example: {example}", ""]
    return "\n".join(lines)


def add_examples(commands: dict[str, argparse.ArgumentParser], prefix: str = "") -> None:
    """Each command's --help ends with its example (nested commands too: `covidct data download --help`)."""
    for name, parser in commands.items():
        key = f"{prefix}{name}"
        if key in EXAMPLES:
            parser.epilog = f"example:\n  {EXAMPLES[key]}"
            parser.formatter_class = argparse.RawDescriptionHelpFormatter
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in nested:
            add_examples(action.choices, f"{key} ")
