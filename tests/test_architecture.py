"""The layering of the package: a stage may import its own and lower stages, never a higher one (also not inside
a function). The order is data -> models -> runs -> ood -> inference -> evaluation -> training -> reporting -> cli, over
a core of settings, errors and file helpers that every stage may use."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "covidct"
LAYERS = [
    {"covidct", "covidct.errors", "covidct.fileio", "covidct.config", "covidct.tables", "covidct.plotting"},
    {"covidct.data"},
    {"covidct.models"},
    {"covidct.runs"},
    {"covidct.ood"},
    {"covidct.inference"},
    {"covidct.evaluation"},
    {"covidct.training"},
    {"covidct.reporting"},
    {"covidct.cli", "covidct.__main__"},
]


def layer_of(module: str) -> int:
    """The layer of a dotted module name: its longest prefix named in LAYERS."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        for i, names in enumerate(LAYERS):
            if prefix in names:
                return i
    raise KeyError(f"module {module} is in no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every covidct import in the file, top-level or not."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "covidct":  # from covidct import data, ... names submodules or core names
                found += [(node.lineno, f"covidct.{a.name}") for a in node.names if (PACKAGE / a.name).exists()
                          or (PACKAGE / f"{a.name}.py").exists()]  # fmt: skip
                found.append((node.lineno, "covidct"))
            elif node.module.startswith("covidct."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("covidct")]
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        me = module_name(path)
        mine = layer_of(me)
        for line, target in imports(path):
            if layer_of(target) > mine:
                out.append(f"{path.relative_to(package.parent)}:{line}: {me} imports higher stage {target}")
    return out


def test_no_stage_imports_a_higher_one():
    assert violations() == []


def test_the_check_sees_a_violation(tmp_path):
    """The checker itself: a data module importing training (inside a function) is reported."""
    pkg = tmp_path / "covidct"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "bad.py").write_text("def f():\n    from covidct.training.fit import train\n")
    global PACKAGE
    old, PACKAGE = PACKAGE, pkg
    try:
        assert violations(pkg) == ["covidct/data/bad.py:2: covidct.data.bad imports higher stage covidct.training.fit"]
    finally:
        PACKAGE = old


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


@pytest.mark.parametrize("module", ["covidct.inference.load", "covidct.inference.predict", "covidct.inference.serve"])
def test_inference_does_not_need_training_code(module):
    """Loading and scoring a trained model must not pull in Lightning or the training package."""
    import subprocess
    import sys

    code = f"import sys, {module}; print([m for m in sys.modules if m.startswith(('lightning', 'covidct.training'))])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
