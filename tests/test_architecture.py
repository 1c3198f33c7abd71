"""The layering of the package: a stage may import its own and lower stages, never a higher one (also not inside
a function). The order is data -> audit, downloads -> verdict -> models -> runs, model card -> ood -> inference ->
evaluation -> training -> studies -> adaptation -> reporting -> cli, over a core of settings, errors and file
helpers that every stage may use."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "covidct"
LAYERS = [
    {
        "covidct",
        "covidct.errors",
        "covidct.fileio",
        "covidct.config",
        "covidct.fileio.tables",
        "covidct.fileio.plotting",
        "covidct.runs.operating_point",
        "covidct.fileio.cards",
    },
    {"covidct.data"},
    {"covidct.data.audit", "covidct.data.downloads"},
    {"covidct.verdict"},
    {"covidct.models"},
    {"covidct.runs", "covidct.runs.model_card"},
    {"covidct.ood"},
    {"covidct.inference"},
    {"covidct.evaluation"},
    {"covidct.training"},
    {"covidct.studies"},
    {"covidct.adaptation"},
    {"covidct.reporting"},
    {"covidct.cli", "covidct.__main__", "covidct.api"},
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


def _from_target(node: ast.ImportFrom, me: str, is_package: bool) -> str:
    """The absolute module of `from X import ...`, relative ones resolved against the importing module."""
    if not node.level:
        return node.module or ""
    base = me.split(".") if is_package else me.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _dynamic_target(node: ast.Call) -> str | None:
    """The module named by importlib.import_module(...) or __import__(...): its literal text, or the literal start
    of an f-string ('covidct.x.{name}' counts as covidct.x); '?' when it cannot be read at all."""
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).rstrip(".")
    return "?"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every covidct import in the file, top-level or not, relative or not, and of importlib's
    dynamic imports of covidct modules (an unreadable dynamic target is reported as covidct.?)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me, is_package = module_name(path), path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _from_target(node, me, is_package)
            if target == "covidct" or target.startswith("covidct."):
                found.append((node.lineno, target))
                # from covidct.x import y, ... where y is a submodule: an import of covidct.x.y too
                folder = PACKAGE.joinpath(*target.split(".")[1:])
                found += [
                    (node.lineno, f"{target}.{a.name}")
                    for a in node.names
                    if (folder / a.name).is_dir() or (folder / f"{a.name}.py").is_file()
                ]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("covidct")]
        elif isinstance(node, ast.Call):
            target = _dynamic_target(node)
            if target == "?":
                found.append((node.lineno, "covidct.?"))
            elif target and target.startswith("covidct"):
                found.append((node.lineno, target))
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        me = module_name(path)
        mine = layer_of(me)
        for line, target in imports(path):
            if target == "covidct.?" or layer_of(target) > mine:
                out.append(f"{path.relative_to(package.parent)}:{line}: {me} imports higher stage {target}")
    return out


def private_imports(package: Path = PACKAGE) -> list[str]:
    """`from covidct.x import _name` in another module than x: a private name used across modules."""
    out = []
    for path in sorted(package.rglob("*.py")):
        me, is_package = module_name(path), path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = _from_target(node, me, is_package)
                if target.startswith("covidct") and target != me:
                    out += [
                        f"{me} imports {target}.{a.name}"
                        for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                    ]
    return out


def import_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """Cycles of the module graph (every import counted, inside functions too), as strongly connected components:
    a cycle inside one package is as hard to follow as one between stages."""
    modules = {module_name(p): p for p in package.rglob("*.py")}
    graph = {
        m: {t if t in modules else t.rpartition(".")[0] for _, t in imports(p)} & set(modules) - {m}
        for m, p in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


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


def _planted(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "covidct"
    for name, text in {"__init__.py": "", "data/__init__.py": "", "training/__init__.py": "", **files}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


def test_the_check_sees_relative_and_dynamic_upward_imports(tmp_path, monkeypatch):
    pkg = _planted(
        tmp_path,
        {
            "data/rel.py": "def f():\n    from ..training.fit import train\n",
            "data/dyn.py": "import importlib\nm = importlib.import_module('covidct.training.fit')\n",
            "data/fstr.py": "import importlib\nm = importlib.import_module(f'covidct.training.{x}')\n",
            "data/opaque.py": "import importlib\nname = 'x'\nm = importlib.import_module(name)\n",
            "data/fine.py": "from . import rel\nfrom .rel import f\n",
        },
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    found = violations(pkg)
    assert found == [
        "covidct/data/dyn.py:2: covidct.data.dyn imports higher stage covidct.training.fit",
        "covidct/data/fstr.py:2: covidct.data.fstr imports higher stage covidct.training",
        "covidct/data/opaque.py:3: covidct.data.opaque imports higher stage covidct.?",
        "covidct/data/rel.py:2: covidct.data.rel imports higher stage covidct.training.fit",
    ]


def test_no_module_imports_another_modules_private_names():
    assert private_imports() == []


def test_the_check_sees_a_private_import_and_a_cycle(tmp_path, monkeypatch):
    pkg = _planted(
        tmp_path,
        {
            "data/a.py": "from covidct.data.b import _helper\n",
            "data/b.py": "def g():\n    from covidct.data import a\n\ndef _helper():\n    pass\n",
        },
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert private_imports(pkg) == ["covidct.data.a imports covidct.data.b._helper"]
    assert import_cycles(pkg) == [["covidct.data.a", "covidct.data.b"]]


def test_no_import_cycles_inside_packages_either():
    assert import_cycles() == []


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


def package_arrows(package: Path = PACKAGE) -> set[tuple[str, str]]:
    """(importer, imported) between the top-level packages and modules of covidct (covidct.data, covidct.errors, ...):
    every import counted, inside functions too; the bare `covidct` (its version and disclaimer) left out."""

    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    arrows = set()
    for path in package.rglob("*.py"):
        me = top(module_name(path))
        arrows |= {(me, top(t)) for _, t in imports(path) if top(t) not in (me, "covidct")}
    return arrows


# The arrows between covidct's 17 top-level packages and modules: a number that may only fall (issue 49 asked for
# fewer than 100; 133 when this test was written, 95 once the file helpers, the run-folder records and the data's
# audit and downloads each moved into the package they belong to, 96 with the API reaching the reports that
# `covidct report` and `covidct study` now print through it).
MAX_PACKAGE_ARROWS = 96


def test_the_arrows_between_packages_only_fall():
    n = len(package_arrows())
    assert n <= MAX_PACKAGE_ARROWS, f"{n} arrows between packages (at most {MAX_PACKAGE_ARROWS}): import less"
    if n < MAX_PACKAGE_ARROWS:
        pytest.fail(f"{n} arrows now: lower MAX_PACKAGE_ARROWS to {n}")


def test_the_arrow_count_sees_an_arrow(tmp_path, monkeypatch):
    pkg = _planted(tmp_path, {"data/a.py": "from covidct.training import fit\n", "training/fit.py": "import covidct\n"})
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert package_arrows(pkg) == {("covidct.data", "covidct.training")}
