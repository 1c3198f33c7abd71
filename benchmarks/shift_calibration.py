"""Calibration and power of the batch shift test (covidct.ood.shift), on a trained run: its validation images are the
reference, as training stores it. Prints a Markdown table for benchmarks/SHIFT.md.

- false alarms: the validation images split at random into a reference and a batch of 50 (disjoint), 200 draws;
- negative control: batches of 50 of the validation images against the whole validation reference, 20 draws;
- the run's own test split, by batch size, against the validation reference (a shift where the model may hold);
- power on another source, by batch size (10, 20, 50, 100, 200), 200 draws each;
- benign changes of the validation images (JPEG at quality 50, resized to 75%, grey noise of sd 5, rotated 5
  degrees), batches of 50 against the unchanged validation reference, 200 draws each (--benign).
The test split and the other source are only scored, never used to fit or tune anything. Usage:
    .venv/bin/python benchmarks/shift_calibration.py RUN --other sars-cov-2-ct=../shared/datasets/sars-cov-2-ct
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import kstest

from covidct.data import ImageDataset, load_rgb
from covidct.data.sources import external_set
from covidct.inference.load import load_checkpoint
from covidct.ood.fit import _one_pass
from covidct.ood.image_statistics import IMAGE_STATISTICS, statistics_by_name
from covidct.ood.shift import ShiftReference, shift_test
from covidct.runs import RunDir

SIZES = (10, 20, 50, 100, 200)


def outputs(run: RunDir, samples: list, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(detector features, image statistics) of every sample, cached by file."""
    if cache.is_file():
        saved = np.load(cache)
        return saved["features"], saved["statistics"]
    model = load_checkpoint(run.checkpoint("best"), run)
    dataset = ImageDataset(samples, model.transform).with_statistics(statistics_by_name(IMAGE_STATISTICS))
    _, features, extras = _one_pass(model.scoring().network, dataset, 64)
    statistics = np.hstack([extras[k].reshape(len(features), -1) for k in IMAGE_STATISTICS])
    np.savez(cache, features=features, statistics=statistics)
    return features, statistics


def rate(reference: ShiftReference, feats: np.ndarray, stats: np.ndarray, size: int, draws: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    records = []
    for d in range(draws):
        pick = rng.choice(len(feats), size, replace=False)
        records.append(shift_test(reference, feats[pick], stats[pick], seed=d))
    flagged = np.mean([r["shifted"] for r in records])
    per_test = {k: float(np.mean([r["tests"][k]["p_value"] < 0.05 / 3 for r in records])) for k in records[0]["tests"]}
    return {"flagged": float(flagged), "per_test": per_test, "p": [r["p_value"] for r in records]}


def false_alarms(feats: np.ndarray, stats: np.ndarray, basis: np.ndarray, draws: int = 200, batch: int = 50) -> dict:
    """Disjoint random parts of the same held-out images: the reference and a batch."""
    rng = np.random.default_rng(0)
    records = []
    for d in range(draws):
        order = rng.permutation(len(feats))
        ref, bat = order[batch:], order[:batch]
        reference = ShiftReference.fit(feats[ref], stats[ref], basis)
        records.append(shift_test(reference, feats[bat], stats[bat], seed=d))
    p = np.array([r["p_value"] for r in records])
    raw = {k: np.array([r["tests"][k]["p_value"] for r in records]) for k in records[0]["tests"]}
    return {
        "flagged": float(np.mean(p < 0.05)),
        "raw_rates": {k: float(np.mean(v < 0.05)) for k, v in raw.items()},
        "ks_uniform": {k: float(kstest(v, "uniform").pvalue) for k, v in raw.items()},
    }


BENIGN = {
    "JPEG quality 50": lambda img: _jpeg(img, 50),
    "resized to 75%": lambda img: img.resize((max(1, img.width * 3 // 4), max(1, img.height * 3 // 4))),
    "grey noise, sd 5": lambda img: _noisy(img, 5.0),
    "rotated 5 degrees": lambda img: img.rotate(5, resample=Image.Resampling.BILINEAR),
}


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _noisy(img: Image.Image, sd: float) -> Image.Image:
    array = np.asarray(img.convert("RGB"), dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, sd, array.shape[:2])[..., None]
    return Image.fromarray(np.clip(array + noise, 0, 255).round().astype(np.uint8))


def changed_copies(samples: list, change, folder: Path) -> list:
    """The samples' images changed and written as PNG (their statistics are then those of the changed image)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, s in enumerate(samples):
        path = folder / f"{i:04d}.png"
        if not path.is_file():
            change(load_rgb(s.path)).save(path)
        out.append(dataclasses.replace(s, path=path))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--other", help="NAME=DIR of a source the model never trained on")
    parser.add_argument("--cache", default="/tmp/shift-cache")
    parser.add_argument("--benign", action="store_true", help="also the benign changes of the validation images")
    args = parser.parse_args()
    run = RunDir.at(args.run)
    cache = Path(args.cache) / run.name
    cache.mkdir(parents=True, exist_ok=True)
    data = run.data()
    val_f, val_s = outputs(run, data.splits["val"], cache / "val.npz")
    test_f, test_s = outputs(run, data.splits["test"], cache / "test.npz")
    train_f, _ = outputs(run, data.splits["train"], cache / "train.npz")  # the axes, as training fits them
    reference = ShiftReference.fit(val_f, val_s, train_f)
    start = time.perf_counter()
    shift_test(reference, test_f[:200], test_s[:200])
    print(f"cost of one test of 200 images against {len(val_f)}: {time.perf_counter() - start:.2f} s")
    fa = false_alarms(val_f, val_s, train_f)
    print(
        f"| false alarms (disjoint halves of val, batches of 50, 200 draws) | {fa['flagged']:.3f} | raw per test "
        f"at 0.05: {fa['raw_rates']} | KS vs uniform p: {fa['ks_uniform']} |"
    )
    neg = rate(reference, val_f, val_s, 50, 20, 1)
    print(f"| negative control (val batches of 50 inside the reference, 20 draws) | {neg['flagged']:.2f} |")
    for size in (20, 50, 100):
        r = rate(reference, test_f, test_s, size, 200, 2)
        print(f"| own test split, batches of {size} (200 draws) | {r['flagged']:.3f} | per test {r['per_test']} |")
    if args.benign:
        for what, change in BENIGN.items():
            slug = re.sub(r"[^a-z0-9]+", "-", what.lower())
            samples = changed_copies(data.splits["val"], change, cache / f"benign-{slug}")
            f, s = outputs(run, samples, cache / f"benign-{slug}.npz")
            r = rate(reference, f, s, 50, 200, 4)
            print(
                f"| validation images, {what}, batches of 50 (200 draws) | {r['flagged']:.3f} | per test "
                f"{r['per_test']} |"
            )
    if args.other:
        name, samples = external_set(args.other)
        rng = np.random.default_rng(0)
        chosen = [samples[i] for i in sorted(rng.choice(len(samples), min(1000, len(samples)), replace=False))]
        other_f, other_s = outputs(run, chosen, cache / f"{name}.npz")
        for size in SIZES:
            r = rate(reference, other_f, other_s, size, 200, 3)
            print(f"| {name}, batches of {size} (200 draws) | {r['flagged']:.3f} | per test {r['per_test']} |")


if __name__ == "__main__":
    main()
