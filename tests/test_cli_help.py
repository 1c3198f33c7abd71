"""The command line as a newcomer meets it: bare `covidct` and --help group the commands by what a user does with an
example each; every command's --help ends with an example; every option has help text and states its default once."""

from __future__ import annotations

import argparse
import re

from covidct.cli import build_parser, main
from covidct.cli.guide import GROUPS, START_HERE


def commands(parser: argparse.ArgumentParser, name: str = "covidct"):
    """(name, parser) of the program and every command and nested command."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from commands(sub, f"{name} {sub_name}")


def test_every_command_is_in_one_group_and_the_overview_says_where_to_start(capsys):
    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    grouped = [name for _, _, names in GROUPS for name in names]
    assert sorted(grouped) == sorted(top) and len(set(grouped)) == len(grouped)
    assert main([]) == 0  # bare covidct: the overview, not a usage error
    out = capsys.readouterr().out
    assert START_HERE in out and out.count("  example: covidct ") == len(GROUPS)
    assert out.index("reproduce the study:") < out.index("use at a site:")


def test_every_command_has_an_example_and_every_option_its_help():
    missing_example, no_help, twice = [], [], []
    for name, parser in commands(build_parser()):
        if name != "covidct" and "example:\n  covidct " not in parser.format_help():
            missing_example.append(name)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            text = action.help or ""
            if not text or text == argparse.SUPPRESS:
                no_help.append(f"{name} {action.option_strings or action.dest}")
            elif re.search(r"\(default[^)]*\)\s*\(default", text):
                twice.append(f"{name} {action.option_strings}")
    assert missing_example == [] and no_help == [] and twice == []


def test_train_help_puts_its_settings_in_groups():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for title in ("data:", "model:", "schedule:", "evaluation:", "output:"):
        assert f"\n{title}\n" in text, title
    flat = " ".join(text.split())
    assert flat.count("(default: $COVIDCT_DATA_DIR") == 1 and "(default data/covid-ct)" not in flat
