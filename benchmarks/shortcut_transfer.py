"""What carries over between sources without a deep net (GENERALIZATION.md, "What transfers").

For every image of each source: the shortcut classifier's features (covidct.data.audit.report.image_record: size,
format, mode, bytes per pixel, 32-bin grey histogram) and its mean grey level. Prints, as Markdown:
- per source, the AUC of the mean grey level itself as a COVID score (nothing fitted: ground glass raises lung
  density, so it is the one cue with a known direction);
- the probe fitted on one source and scored on the other (covidct.data.audit.shortcut.transfer_auc), with the histogram
  and without it (metadata only).

Usage: python benchmarks/shortcut_transfer.py --source covid-ct=DIR --source sars-cov-2-ct=DIR
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from covidct.data.audit.report import image_record
from covidct.data.audit.shortcut import HIST_BINS, META_COLUMNS, transfer_auc
from covidct.data.sources import load_source, parse_source

CENTRES = (np.arange(HIST_BINS) + 0.5) * (256 / HIST_BINS)


def features(spec: str) -> tuple[np.ndarray, np.ndarray]:
    data = load_source(spec)
    samples = [s for split in ("train", "val", "test") for s in data.splits[split]]
    x = np.stack([image_record("all", s.label, s.path).probe for s in samples])
    return x, np.array([s.label for s in samples])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    data = {parse_source(spec)[0]: features(spec) for spec in args.source}
    print("| source | images | mean grey level as the score (nothing fitted) |\n|---|---|---|")
    for name, (x, y) in data.items():
        grey = x[:, META_COLUMNS:] @ CENTRES  # the histogram's mean
        print(f"| {name} | {len(y)} | {roc_auc_score(y, grey):.3f} |")
    print("\n| fitted on | scored on | probe AUC (metadata + histogram) | metadata only |\n|---|---|---|---|")
    for a, (xa, ya) in data.items():
        for b, (xb, yb) in data.items():
            if a != b:
                full = transfer_auc(xa, ya, xb, yb)
                meta = transfer_auc(xa[:, :META_COLUMNS], ya, xb[:, :META_COLUMNS], yb)
                print(f"| {a} | {b} | {full:.3f} | {meta:.3f} |")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
