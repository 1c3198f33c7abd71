"""Small units: no function in src longer than 60 lines or more complex than radon's grade C (cyclomatic
complexity 20), so each can be read at once. A function that grows past either is split into named stages."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from radon.complexity import cc_rank, cc_visit

SRC = Path(__file__).resolve().parents[1] / "src" / "covidct"
MAX_LINES = 60
MAX_RANK = "C"


def long_functions(root: Path = SRC, limit: int = MAX_LINES) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {lines} lines")
    return out


def complex_functions(root: Path = SRC, worst: str = MAX_RANK) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for block in cc_visit(path.read_text(encoding="utf-8")):
            if cc_rank(block.complexity) > worst:
                out.append(f"{path.relative_to(root)}:{block.lineno} {block.name}: {block.complexity}")
    return out


def test_no_function_over_60_lines():
    assert long_functions() == []


def test_no_function_above_radon_grade_c():
    assert complex_functions() == []


def test_the_checks_see_a_long_and_a_complex_function(tmp_path):
    body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(40))
    (tmp_path / "big.py").write_text(f"def big(x):\n{body}    return -1\n")
    assert long_functions(tmp_path) == ["big.py:1 big: 82 lines"]
    assert complex_functions(tmp_path) == ["big.py:1 big: 41"]


MAX_PARAMETERS = 6
# Public functions over MAX_PARAMETERS: none are left (recipes, settings and specs travel as dataclasses); the
# list of exceptions may only shrink.
OVER_PARAMETERS: set[str] = set()


def public_functions(root: Path = SRC) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(path name, node) of every function of a module or class whose name does not start with _."""
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for parent in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
            for node in parent.body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
                    out.append((f"{path.relative_to(root).as_posix()} {node.name}", node))
    return out


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    a = node.args
    return [p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]


def test_public_functions_take_at_most_6_parameters_and_the_list_of_exceptions_only_shrinks():
    over = {name for name, node in public_functions() if len(_parameters(node)) > MAX_PARAMETERS}
    assert over - OVER_PARAMETERS == set(), "take a settings dataclass instead"
    assert OVER_PARAMETERS - over == set(), "fixed: remove it from OVER_PARAMETERS"


def test_every_public_function_is_typed():
    untyped = [
        name
        for name, node in public_functions()
        if node.returns is None or any(p.annotation is None for p in _parameters(node))
    ]
    assert untyped == []


def test_the_parameter_and_type_checks_see_a_bad_function(tmp_path):
    (tmp_path / "m.py").write_text("def f(a, b, c, d, e, f, g) -> None:\n    pass\n\n\ndef _ok(a):\n    pass\n")
    ((name, node),) = public_functions(tmp_path)
    assert name == "m.py f" and len(_parameters(node)) == 7 and node.args.args[0].annotation is None


ALLOWLIST = Path(__file__).resolve().parents[1] / "tools" / "vulture_allowlist.py"
# The allow-list's length when this test was written: it may only shrink.
MAX_ALLOWED_UNUSED = 80


def unused_code(paths: list[Path]) -> list[Any]:
    from vulture import Vulture

    v = Vulture()
    v.scavenge([str(p) for p in paths])
    return v.get_unused_code(min_confidence=60)


def test_no_dead_code_beyond_the_allow_list():
    dead = [f"{i.filename}:{i.first_lineno}: {i.message}" for i in unused_code([SRC, ALLOWLIST])]
    assert dead == [], "delete it, or (if a framework calls it) add it to tools/vulture_allowlist.py"


def test_the_allow_list_holds_only_what_is_still_reported_and_only_shrinks():
    listed = [line.split("#")[0].strip() for line in ALLOWLIST.read_text().splitlines()]
    listed = [name.removeprefix("_.") for name in listed if name]
    reported = {i.name for i in unused_code([SRC])}
    assert sorted(set(listed) - reported) == [], "vulture no longer reports these: remove them from the allow-list"
    assert len(listed) <= MAX_ALLOWED_UNUSED


def test_the_dead_code_check_sees_an_unused_function(tmp_path):
    (tmp_path / "m.py").write_text("def used() -> int:\n    return 1\n\n\ndef unused() -> int:\n    return used()\n")
    assert [i.name for i in unused_code([tmp_path])] == ["unused"]
