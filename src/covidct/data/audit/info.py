"""What is in a dataset: counts per split and class, image modes, formats and sizes, and what is broken."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from covidct.data.datasets import SplitData
from covidct.data.images import image_header, load_rgb
from covidct.errors import DataError


@dataclass
class DatasetInfo:
    counts: dict[str, dict[str, int]]
    modes: dict[str, Counter] = field(default_factory=dict)  # class -> mode counts
    formats: dict[str, Counter] = field(default_factory=dict)  # class -> file format counts
    sizes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # class -> min w, min h, max w, max h
    unreadable: list[str] = field(default_factory=list)
    overlap: list[str] = field(default_factory=list)  # files listed in more than one split


def dataset_info(data: SplitData, check_images: bool = True) -> DatasetInfo:
    """Inspect every image (fully decoded, so truncated files are found)."""
    info = DatasetInfo(counts=data.counts())
    where: dict[Path, str] = {}
    for split, samples in data.splits.items():
        for s in samples:
            if s.path in where:
                info.overlap.append(f"{s.path} in {where[s.path]} and {split}")
            where[s.path] = split
    if not check_images:
        return info
    sizes: dict[str, list[tuple[int, int]]] = {}
    for samples in data.splits.values():
        for s in samples:
            name = data.class_names[s.label]
            try:
                mode, fmt, size = image_header(s.path)
                load_rgb(s.path)
            except (DataError, OSError) as e:
                info.unreadable.append(str(e))
                continue
            info.modes.setdefault(name, Counter())[mode] += 1
            info.formats.setdefault(name, Counter())[fmt] += 1
            sizes.setdefault(name, []).append(size)
    for name, wh in sizes.items():
        ws, hs = [w for w, _ in wh], [h for _, h in wh]
        info.sizes[name] = (min(ws), min(hs), max(ws), max(hs))
    return info


def format_info(info: DatasetInfo, class_names: tuple[str, ...]) -> str:
    """A plain-text summary for the terminal."""
    lines = [f"{'split':<8}" + "".join(f"{c:>10}" for c in class_names) + f"{'total':>10}"]
    for split, counts in info.counts.items():
        row = [counts.get(c, 0) for c in class_names]
        lines.append(f"{split:<8}" + "".join(f"{n:>10}" for n in row) + f"{sum(row):>10}")
    for name in class_names:
        if name in info.modes:
            w0, h0, w1, h1 = info.sizes[name]
            lines.append(
                f"{name}: modes {dict(info.modes[name])}, formats {dict(info.formats[name])}, "
                f"sizes {w0}x{h0} to {w1}x{h1}"
            )
    lines += shortcut_warnings(info, class_names)
    for problem in info.overlap:
        lines.append(f"overlap: {problem}")
    for problem in info.unreadable:
        lines.append(f"unreadable: {problem}")
    return "\n".join(lines)


def shortcut_warnings(info: DatasetInfo, class_names: tuple[str, ...], gap: float = 0.2) -> list[str]:
    """Warn where a file format or colour mode is much more common in one class than another (by > gap):
    a model can learn the format instead of the lungs."""
    warnings = []
    for what, table in (("file format", info.formats), ("colour mode", info.modes)):
        if len(table) < 2:
            continue
        values = sorted({v for counter in table.values() for v in counter})
        for v in values:
            share = {c: table[c][v] / max(1, sum(table[c].values())) for c in class_names if c in table}
            if max(share.values()) - min(share.values()) > gap:
                detail = ", ".join(f"{c} {100 * f:.0f}%" for c, f in share.items())
                warnings.append(
                    f"warning: {what} {v} differs between classes ({detail}); a model can learn it instead of the lungs"
                )
    return warnings
