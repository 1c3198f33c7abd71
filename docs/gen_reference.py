"""The reference pages that are generated, not written (mkdocs-gen-files runs this at every `mkdocs build`): the
command line from its parser, the settings from their dataclasses, the input limits, the run folder from `RunDir`,
the model card's fields from `ModelCard`, the REST API from the app's OpenAPI document, and the benchmark reports
from benchmarks/ as they are in the repository (included, never copied by hand)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from pathlib import Path

import mkdocs_gen_files

from covidct import config as settings_module
from covidct.cli import build_parser
from covidct.cli.common import limit_flag

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("COLUMNS", "118")  # argparse wraps help text to the terminal's width: the same on every machine


def cell(value: object) -> str:
    """A value as a Markdown table cell (pipes escaped, no line breaks)."""
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text.replace("[", "\\[")  # "[,group]" is no cross-reference


def commands(parser: argparse.ArgumentParser, prefix: str = "covidct") -> list[tuple[str, str]]:
    """Every command and subcommand with its --help text, depth first, in the parser's order."""
    found = [(prefix, parser.format_help())]
    for action in parser._actions:  # argparse keeps its subparsers here only (no public accessor)
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, f"{prefix} {name}")
    return found


def cli_page() -> str:
    parts = [
        "# Command line\n",
        "Generated from the parser at build time: what `covidct COMMAND --help` prints, for every command.\n",
    ]
    for name, text in commands(build_parser()):
        parts.append(f"## `{name}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def settings_table(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    rows = ["| field | flag | default | type | what |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if cls is settings_module.InputLimits:
            flag = f"`{limit_flag(f.name)}`"
        elif meta.get("cli", True):
            flag = f"`--{(meta.get('flag') or f.name).replace('_', '-')}`"
        else:
            flag = "(file only)"
        what = meta.get("help", "")
        if meta.get("choices"):
            what += f" (one of: {', '.join(map(str, meta['choices']))})"
        kind = getattr(hints[f.name], "__name__", str(hints[f.name]))
        rows.append(f"| `{f.name}` | {flag} | `{cell(default)}` | {cell(kind)} | {cell(what)} |")
    return "\n".join(rows) + "\n"


def configuration_page() -> str:
    parts = [
        "# Configuration\n",
        "Every setting is declared once, as a field of a settings dataclass in `covidct.config`; the command line's "
        "flags are built from these fields (booleans as `--x/--no-x`), and a YAML file of the same fields is read by "
        "`--config`, with the precedence defaults < YAML < flags. Unknown fields are refused by name. Generated from "
        "the dataclasses at build time.\n",
    ]
    for cls in (settings_module.TrainConfig, settings_module.EvalConfig, settings_module.PretrainConfig):
        doc = " ".join((cls.__doc__ or "").split())
        parts.append(f"## {cls.__name__}\n\n{doc}\n\n{settings_table(cls)}")
    parts.append("The input limits are settings too: [Input limits](input-limits.md).\n")
    return "\n".join(parts)


def limits_page() -> str:
    text = (ROOT / "docs/reference/input-limits.md").read_text(encoding="utf-8")
    return text.replace("<!-- generated: the limits -->", settings_table(settings_module.InputLimits))


def run_folder_page() -> str:
    from covidct.runs import RunDir

    run = RunDir(Path("RUN"))
    rows = ["| what | path in the run folder | read and written by |", "|---|---|---|"]
    for name, member in vars(RunDir).items():
        if isinstance(member, property) and name.endswith(("_path", "_dir")):
            path = getattr(run, name).relative_to("RUN")
            doc = " ".join((member.__doc__ or "").split())
            rows.append(f"| `{name}` | `{path}` | {cell(doc) or 'RunDir.' + name} |")
    text = (ROOT / "docs/reference/run-folder.md").read_text(encoding="utf-8")
    return text.replace("<!-- generated: the paths -->", "\n".join(rows) + "\n")


def model_card_page() -> str:
    from covidct.runs.model_card import ModelCard

    hints = typing.get_type_hints(ModelCard)
    rows = ["| field | type | required |", "|---|---|---|"]
    for f in dataclasses.fields(ModelCard):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        rows.append(f"| `{f.name}` | {cell(hints[f.name])} | {'yes' if required else 'no'} |")
    doc = " ".join((ModelCard.__doc__ or "").split())
    text = (ROOT / "docs/reference/model-card.md").read_text(encoding="utf-8")
    return text.replace("<!-- generated: the fields -->", f"{doc}\n\n" + "\n".join(rows) + "\n")


def rest_api_page() -> str:
    from covidct.inference.serve import openapi_document

    document = openapi_document()
    rows = ["| method | path | what | answers |", "|---|---|---|---|"]
    for path, methods in document["paths"].items():
        for method, spec in methods.items():
            what = spec.get("summary") or spec.get("description", "")
            codes = ", ".join(sorted(spec.get("responses", {})))
            rows.append(f"| {method.upper()} | `{path}` | {cell(what)} | {codes} |")
    text = (ROOT / "docs/reference/rest-api.md").read_text(encoding="utf-8")
    body = "\n".join(rows) + '\n\n??? note "The OpenAPI document"\n\n    ```json\n'
    body += "\n".join("    " + line for line in json.dumps(document, indent=2).splitlines()) + "\n    ```\n"
    return text.replace("<!-- generated: the routes -->", body)


def results_pages() -> None:
    """benchmarks/*.md as they are, under results/ (the figures live in one place: benchmarks/)."""
    for report in sorted((ROOT / "benchmarks").glob("*.md")):
        with mkdocs_gen_files.open(f"results/{report.name}", "w") as out:
            out.write(report.read_text(encoding="utf-8"))
        mkdocs_gen_files.set_edit_path(f"results/{report.name}", f"../benchmarks/{report.name}")
    for picture in sorted((ROOT / "benchmarks/screens").glob("*.png")):  # the pictures the reports show
        with mkdocs_gen_files.open(f"results/screens/{picture.name}", "wb") as out:
            out.write(picture.read_bytes())


PAGES = {
    "reference/cli.md": cli_page,
    "reference/configuration.md": configuration_page,
    "reference/input-limits.md": limits_page,
    "reference/run-folder.md": run_folder_page,
    "reference/model-card.md": model_card_page,
    "reference/rest-api.md": rest_api_page,
}
for page, make in PAGES.items():
    with mkdocs_gen_files.open(page, "w") as out:
        out.write(make())
results_pages()
