"""The command line: `covidct COMMAND`. Each module here registers its own subcommands and parses; the work is
done by the library. A new command is a cmd_* function and a few lines in its module's register()."""

from __future__ import annotations

import argparse
import sys
import warnings

from covidct import DISCLAIMER, __version__
from covidct.cli import data, evaluate, inference, info, ood, train
from covidct.errors import CovidCTError, TrainingInterrupted

COMMAND_MODULES = (data, train, evaluate, inference, ood, info)


def build_parser() -> argparse.ArgumentParser:
    from covidct.cli.guide import add_examples, overview

    parser = argparse.ArgumentParser(
        prog="covidct",
        usage="covidct [-h] [--version] COMMAND ...   (covidct COMMAND --help: its options and an example)",
        description=f"Chest CT COVID-19 classifiers: train, evaluate, compare.\n{DISCLAIMER}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"covidct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in COMMAND_MODULES:
        module.register(sub)
    parser.epilog = overview(parser, sub.choices)
    sub.help = argparse.SUPPRESS  # listed by group in the epilog instead of in registration order
    add_examples(sub.choices)
    return parser


def show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    """A warning as one line a user reads ("covidct: warning: ..."), not Python's file:line and source echo."""
    print(f"covidct: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `covidct`: what it can do and where to start, not a usage error
        parser.print_help()
        return 0
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """The command, with a user's errors as one line and an exit status (2: bad input; 130: interrupted)."""
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
