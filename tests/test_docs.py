"""The documentation's contracts that need no build: the README is a front page, the public API is documented and
complete, the notebook keeps no outputs in git, every page of the site's navigation exists or is generated, and the
docstring examples of cheap functions run (doctest). `make docs` builds the site itself with --strict (CI)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import yaml

import covidct.api as api

ROOT = Path(__file__).resolve().parents[1]
DOCTESTED = ("covidct.fileio", "covidct.fileio.tables", "covidct.verdict", "covidct.cli.common", "covidct.data.inputs")


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    text = "\n".join(lines)
    assert "Research use only" in text and "make demo" in text and "make test" in text and "import covidct.api" in text


def test_every_public_name_of_the_api_is_documented_and_exported():
    for name in api.__all__:
        thing = getattr(api, name)
        assert inspect.getdoc(thing), f"covidct.api.{name} has no docstring"
    for info in pkgutil.iter_modules(api.__path__, "covidct.api."):  # the package's modules, one per job
        module = importlib.import_module(info.name)
        public = {n for n, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module.__name__}
        hidden = {n for n in public if not n.startswith("_")} - set(api.__all__)
        assert not hidden, f"{info.name} defines public functions that covidct.api does not export: {hidden}"


def nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in nav_pages(v)]
    return [p for v in node for p in nav_pages(v)] if isinstance(node, list) else []


def test_every_page_in_the_navigation_exists_or_is_generated():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    generated = {f"results/{p.name}" for p in (ROOT / "benchmarks").glob("*.md")}
    generated |= {"reference/cli.md", "reference/configuration.md"}
    missing = [p for p in nav_pages(config["nav"]) if p not in generated and not (ROOT / "docs" / p).is_file()]
    assert not missing, f"pages in mkdocs.yml's nav that neither exist nor are generated: {missing}"


@pytest.mark.parametrize("module", DOCTESTED)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
