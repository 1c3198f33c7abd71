"""Numbers and tables as text: one formatter for every metric, interval and table covidct prints or writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from covidct.fileio import csv_text, write_text


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table_text(rows: Sequence[dict[str, Any]]) -> str:
    cols = list(rows[0])
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_table(rows: Sequence[dict[str, Any]], stem: str | Path) -> tuple[Path, Path]:
    """stem.csv and stem.md."""
    stem = Path(stem)
    return write_text(stem.with_suffix(".csv"), csv_text(rows)), write_text(
        stem.with_suffix(".md"), table_markdown(rows)
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return number_text(v)
    return "" if v is None else str(v)


def number_text(v: float | None) -> str:
    """A metric with three decimals; 'nan' where it is undefined."""
    return "nan" if v is None or v != v else f"{v:.3f}"


def interval_text(pair: Sequence[float] | None) -> str:
    """'[low, high]'; '' when there is no interval, and '[no interval: too few cases]' when it is undefined (a
    DeLong variance of one case per class, say), never '[nan, nan]'.

    >>> interval_text([0.8214, 0.9307]), interval_text([float("nan"), 0.9])
    ('[0.821, 0.931]', '[no interval: too few cases]')
    """
    if not pair:
        return ""
    if any(v is None or v != v for v in pair):
        return "[no interval: too few cases]"
    return f"[{number_text(pair[0])}, {number_text(pair[1])}]"
