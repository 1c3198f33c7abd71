"""How many near-duplicate pairs of sars-cov-2-ct cross its splits, by the size of the file-number blocks kept
together (GENERALIZATION.md, "sars-cov-2-ct splits by blocks of file numbers"). No model involved.

Usage: python benchmarks/sars_blocks.py AUDIT/near_duplicates.csv ../shared/datasets/sars-cov-2-ct
(the CSV from `covidct data audit --source ... --out AUDIT`)
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from covidct.data.datasets import Sample, group_split
from covidct.data.sources import sars_file_number, sars_group


def number(path: str | Path) -> int:
    return sars_file_number(Path(path))


def main(pairs_csv: str, root: str) -> None:
    rows = [
        r
        for r in csv.DictReader(Path(pairs_csv).read_text().splitlines())
        if r["source_a"] == r["source_b"] == "sars-cov-2-ct"
    ]
    same = [abs(number(r["a"]) - number(r["b"])) for r in rows if r["class_a"] == r["class_b"]]
    print(
        f"{len(rows)} pairs inside sars-cov-2-ct; same-class pairs within 5 numbers: "
        f"{np.mean(np.array(same) <= 5):.0%}, within 20: {np.mean(np.array(same) <= 20):.0%}"
    )
    files = [(p, 1, "COVID") for p in sorted((Path(root) / "COVID").iterdir())]
    files += [(p, 0, "NonCOVID") for p in sorted((Path(root) / "nonCOVID").iterdir())]
    print("| block | train / val / test | pairs across splits |\n|---|---|---|")
    for block in (0, 10, 20, 30, 40):
        samples = [Sample(p, y, "sars-cov-2-ct", sars_group(p, c, block) if block else "") for p, y, c in files]
        splits = group_split(samples, 42)
        where = {str(s.path): k for k, ss in splits.items() for s in ss}
        cross = sum(where[r["a"]] != where[r["b"]] for r in rows)
        sizes = " / ".join(str(len(splits[k])) for k in ("train", "val", "test"))
        print(f"| {block or 'none'} | {sizes} | {cross} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
