"""What the out-of-distribution check costs at prediction: the same images scored with and without it, alternating,
best of N; and the detector's fitting time on N images (features of their forward pass + the fit).

Usage: python benchmarks/ood_speed.py RUN [--repeats 5] [--fit-images 3000] [--unfolded]
"""

from __future__ import annotations

import argparse
import time

import torch

from covidct.data import ImageDataset, load_rgb
from covidct.inference.load import load_trained
from covidct.ood.fit import fit_for_network
from covidct.runs import RunDir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fit-images", type=int, default=3000)
    ap.add_argument("--unfolded", action="store_true", help="score with batch norm as it is (before inference/fold.py)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_trained(args.run)
    if args.unfolded:
        model._scoring = (model.module, model.probe)
    data = RunDir.at(args.run).data()
    images = [load_rgb(s.path) for s in data.splits["test"]]
    plain, checked = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        model.score_images(images, check=False)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        model.score_images(images)
        checked.append(time.perf_counter() - t)
    p, c = min(plain), min(checked)
    print(
        f"predict {len(images)} decoded images: {p:.2f} s without, {c:.2f} s with the check ({100 * (c / p - 1):+.1f}%)"
    )
    pool = [s for sp in ("train", "val", "test") for s in data.splits[sp]]
    pool = (pool * (args.fit_images // len(pool) + 1))[: args.fit_images]
    cut = len(pool) * 4 // 5
    train, val = (ImageDataset(part, model.transform, cache=True) for part in (pool[:cut], pool[cut:]))
    for ds in (train, val):
        ds.preload()  # decoded once, as training has them at its end
    t = time.perf_counter()
    # as training's end runs it: features, framing and pixel statistics in one pass, then the fit (ood/fit.py)
    detector = fit_for_network(model.scoring().network, model.architecture, train, val)
    end = time.perf_counter()
    print(
        f"fit on {len(pool)} decoded images: {end - t:.1f} s (features, framing and pixel statistics and the fit; "
        f"{len(train)} train, {len(val)} validation)"
    )
    print(f"torch threads {torch.get_num_threads()}, feature width {detector.feature_dim}")


if __name__ == "__main__":
    main()
