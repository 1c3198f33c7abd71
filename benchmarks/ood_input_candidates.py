"""Candidate input statistics for the out-of-distribution detector, one-class (benchmarks/OOD.md, section "input
statistics tried for the other-source target"): could anything the input itself shows, beside the three shipped
halves, flag the other source while leaving benign changes alone? Each candidate is a Gaussian (Ledoit-Wolf) or a
5-nearest-neighbour distance on the standardised statistics of the run's training images, its threshold at the 95th
percentile of its validation images; reported: the other source flagged, the benign and framing changes of the
validation images flagged (the test split is not read). No network runs: about a minute per model on 2 cores.

Usage: python benchmarks/ood_input_candidates.py RUN OTHER_SOURCE_SPEC [--out FILE.json]

Why not the shipped code's halves (covidct.ood.framing / pixels): these are candidates, measured to decide whether
a fourth half is worth shipping; what is adopted moves into covidct.data, as the pixel half did.
"""

from __future__ import annotations

import json

import numpy as np
from ood_compare import BENIGN, FRAMING, arguments, image_sets
from PIL import Image
from scipy import ndimage
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import NearestNeighbors

from covidct.runs import RunDir

SPREAD_FLOOR = 0.02  # a statistic that barely varies in training is not allowed to dominate the distance


def border(im: Image.Image) -> np.ndarray:
    """The outer band (1/16 of the shorter side): its grey histogram in four bands, mean and spread, and each side's
    share of dark pixels, sorted (so mirroring does not move them)."""
    g = np.asarray(im.convert("L"), dtype=np.float32)
    b = max(2, int(min(g.shape) / 16))
    sides = [g[:b], g[-b:], g[:, :b], g[:, -b:]]
    band = np.concatenate([s.ravel() for s in sides])
    hist = np.histogram(band, bins=[0, 40, 100, 180, 256])[0] / band.size
    return np.r_[hist, band.mean() / 255, band.std() / 255, sorted((s < 40).mean() for s in sides)]


def thumbnail(im: Image.Image) -> np.ndarray:
    """A 24 x 24 grey thumbnail, standardised: the layout of the image."""
    t = np.asarray(im.convert("L").resize((24, 24), Image.BILINEAR), dtype=np.float32).ravel()
    return (t - t.mean()) / (t.std() + 1e-6)


def size(im: Image.Image) -> np.ndarray:
    return np.log(np.array(im.size, dtype=np.float64))


def colour(im: Image.Image) -> np.ndarray:
    """Share of coloured pixels and mean saturation: figures carry coloured arrows and labels."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32)
    sat = a.max(2) - a.min(2)
    return np.r_[(sat > 20).mean(), sat.mean() / 255]


def spectrum(im: Image.Image) -> np.ndarray:
    """Log power in four radial frequency bands of the central region, relative to the lowest: reconstruction kernel,
    resampling and encoding."""
    g = np.asarray(im.convert("L").resize((256, 256), Image.BILINEAR), dtype=np.float32)[32:224, 32:224]
    p = np.abs(np.fft.rfft2(g - g.mean())) ** 2
    r = np.hypot(np.fft.fftfreq(192)[:, None], np.fft.rfftfreq(192)[None, :])
    bands = [(0.01, 0.03), (0.03, 0.06), (0.06, 0.12), (0.12, 0.25), (0.25, 0.5)]
    e = np.log(np.array([p[(r >= lo) & (r < hi)].mean() for lo, hi in bands]) + 1e-6)
    return e[1:] - e[0]


def topology(im: Image.Image, dark: float = 60) -> np.ndarray:
    """Dark regions enclosed by the body (lungs) and touching the border (air outside), the bright share, and how
    much of the border the body reaches: a tight crop cuts through the body, a whole slice does not."""
    g = np.asarray(im.convert("L").resize((128, 128), Image.BILINEAR), dtype=np.float32)
    lab, _ = ndimage.label(g < dark)
    edge = np.setdiff1d(np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]]), [0])
    outside = np.isin(lab, edge)
    inside = (lab > 0) & ~outside
    body = ~outside
    ring = np.r_[body[0], body[-1], body[:, 0], body[:, -1]]
    return np.r_[inside.mean(), outside.mean(), (g > 100).mean(), body.any(1).mean(), body.any(0).mean(), ring.mean()]


def lung_shares(im: Image.Image, dark: float = 60) -> np.ndarray:
    """As first written in the exploration: [enclosed dark, outside dark, bright], but all zero when the image has no
    pixel below `dark`. That jump is kept on purpose: the sweep over `dark` below shows what it does."""
    t = topology(im, dark)
    return t[:3] if t[0] + t[1] > 0 else np.zeros(3)


CANDIDATES = {
    "border": border,
    "thumbnail": thumbnail,
    "size": size,
    "colour": colour,
    "spectrum": spectrum,
    "topology": topology,
}
COMBINATIONS = [
    ["border"],
    ["thumbnail"],
    ["size"],
    ["colour"],
    ["spectrum"],
    ["topology"],
    ["border", "spectrum"],
    ["border", "topology"],
    ["border", "topology", "spectrum", "size"],
]
DARK_SWEEP = (40, 50, 60, 70, 80)  # the lung_shares jump, at each constant


def flagged(train: np.ndarray, val: np.ndarray, others: dict[str, np.ndarray], kind: str) -> dict[str, float]:
    """Share of each set over the 95th percentile of the validation scores, under a one-class fit on train."""
    mu, sd = train.mean(0), np.maximum(train.std(0), SPREAD_FLOOR)
    z = lambda x: (x - mu) / sd  # noqa: E731
    if kind == "gauss":
        score = LedoitWolf().fit(z(train)).mahalanobis
    else:
        nn = NearestNeighbors(n_neighbors=5).fit(z(train))
        score = lambda x: nn.kneighbors(x)[0].mean(1)  # noqa: E731
    threshold = np.percentile(score(z(val)), 95)
    return {k: float(np.mean(score(z(v)) > threshold)) for k, v in others.items()}


def row(name: str, kind: str, stats: dict[str, np.ndarray]) -> dict:
    res = flagged(stats["train"], stats["val"], {k: v for k, v in stats.items() if k != "train"}, kind)
    benign = {k: res[k] for k in BENIGN}
    return {
        "candidate": name,
        "kind": kind,
        "other source": res["other"],
        "worst benign": max(benign.values()),
        "worst benign change": max(benign, key=benign.get),
        **{k: res[k] for k in FRAMING},
    }


def main() -> None:
    args = arguments()
    data = RunDir.at(args.run).data()
    # the changes are of the validation images: the test split is not read
    imgs = image_sets(data, args.other, args.max_other, ("train", "val"), changed="val")
    stats = {c: {k: np.stack([f(im) for im in v]) for k, v in imgs.items()} for c, f in CANDIDATES.items()}
    rows = []
    for combo in COMBINATIONS:
        joined = {k: np.hstack([stats[c][k] for c in combo]) for k in imgs}
        rows += [row(" + ".join(combo), kind, joined) for kind in ("gauss", "knn")]
    for dark in DARK_SWEEP:
        joined = {
            k: np.hstack([stats["border"][k], np.stack([lung_shares(im, dark) for im in v])]) for k, v in imgs.items()
        }
        rows.append(row(f"border + lung shares (zero without a pixel below {dark})", "gauss", joined))
    text = json.dumps(
        {"run": args.run, "other": args.other, "n": {k: len(v) for k, v in imgs.items()}, "rows": rows}, indent=1
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
