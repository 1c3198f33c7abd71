"""Small units: no function in src longer than 60 lines or more complex than radon's grade C (cyclomatic
complexity 20), so each can be read at once. A function that grows past either is split into named stages."""

from __future__ import annotations

import ast
from pathlib import Path

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
