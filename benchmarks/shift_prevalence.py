"""The batch shift test against class-skewed batches (issue 47, item 9): batches of a run's own validation images at
95/5 and 80/20 COVID/NonCOVID both ways, tested with the reference matched to the batch's estimated class mix (the
shipped test) and with the whole reference (the test before), beside the false-alarm and power figures of SHIFT.md:
batches of the run's test split, and batches of 20 SARS-CoV-2 CT slices. The features, statistics and scores come
from one pass of the run's scorer over each set (LoadedModel.collecting), as predict computes them. Usage:
    .venv/bin/python benchmarks/shift_prevalence.py RUN [--other sars-cov-2-ct=../shared/datasets/sars-cov-2-ct]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from covidct.data import load_rgb
from covidct.data.sources import external_set
from covidct.inference.load import load_trained
from covidct.inference.loaded import SCORE
from covidct.ood.shift import shift_test, statistics_matrix
from covidct.runs import RunDir


def scored(model, samples) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, statistics, scores, labels) of `samples`, one pass of the model."""
    with model.collecting() as outputs:
        model.score_images([load_rgb(s.path) for s in samples])
    features = np.concatenate([f for f, _ in outputs])
    statistics = np.concatenate([statistics_matrix(s) for _, s in outputs])
    scores = np.concatenate([s[SCORE] for _, s in outputs])
    return features, statistics, scores, np.array([s.label for s in samples])


def flagged(model, data, picks: list[np.ndarray], matched: bool) -> float:
    f, s, p, _ = data
    reference, t = model.ood.reference, model.threshold
    hits = [
        shift_test(reference, f[k], s[k], (p[k], t) if matched else None, seed=d)["shifted"]
        for d, k in enumerate(picks)
    ]
    return float(np.mean(hits))


def skewed(labels: np.ndarray, share: float, size: int, draws: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = round(share * size)
    return [
        np.r_[rng.choice(pos, n_pos, replace=False), rng.choice(neg, size - n_pos, replace=False)] for _ in range(draws)
    ]


def row(batch: str, draws: int, model, data, picks: list[np.ndarray]) -> dict:
    matched, whole = flagged(model, data, picks, True), flagged(model, data, picks, False)
    return {"batch": batch, "draws": draws, "matched": matched, "whole_reference": whole}


def false_alarms(model, val, draws: int) -> dict:
    """SHIFT.md's false alarms: the validation images split at random into a reference (68, with their labels and
    scores) and a disjoint batch of 50, the reference's axes and scales kept as training stored them."""
    import dataclasses

    f, s, p, _ = val
    full, t = model.ood.reference, model.threshold
    rng = np.random.default_rng(5)
    hits = {True: [], False: []}
    for d in range(draws):
        order = rng.permutation(len(f))
        ref, bat = order[:-50], order[-50:]
        parts = {k: getattr(full, k)[ref] for k in ("features", "statistics", "labels", "scores")}
        reference = dataclasses.replace(full, **parts)
        for matched in (True, False):
            scored_batch = (p[bat], t) if matched else None
            hits[matched].append(shift_test(reference, f[bat], s[bat], scored_batch, seed=d)["shifted"])
    batch = f"false alarms: validation split in a reference of {len(f) - 50} and a disjoint batch of 50"
    return {
        "batch": batch,
        "draws": draws,
        "matched": float(np.mean(hits[True])),
        "whole_reference": float(np.mean(hits[False])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--other", help="NAME=PATH of another source, scored in batches of 20")
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    model = load_trained(args.run)
    data = RunDir.at(args.run).data()
    val = scored(model, data.splits["val"])
    rows = []
    for share in (0.95, 0.8, 0.2, 0.05):
        picks = skewed(val[3], share, 40, args.draws, seed=int(share * 100))
        rows.append(
            {
                "batch": f"40 validation images, {share:.0%} COVID",
                "draws": args.draws,
                "matched": flagged(model, val, picks, True),
                "whole_reference": flagged(model, val, picks, False),
            }
        )
    rows.append(false_alarms(model, val, 2 * args.draws * 5))
    test = scored(model, data.splits["test"])
    rng = np.random.default_rng(3)
    picks = [rng.choice(len(test[3]), 50, replace=False) for _ in range(args.draws)]
    rows.append(
        {
            "batch": "50 test-split images (its own mix)",
            "draws": args.draws,
            "matched": flagged(model, test, picks, True),
            "whole_reference": flagged(model, test, picks, False),
        }
    )
    if args.other:
        _, samples = external_set(args.other)
        rng = np.random.default_rng(4)
        chosen = [samples[i] for i in rng.choice(len(samples), 20 * args.draws, replace=False)]
        other = scored(model, chosen)
        picks = [np.arange(20 * d, 20 * (d + 1)) for d in range(args.draws)]
        rows.append(
            {
                "batch": f"20 images of {args.other.split('=')[0]}",
                "draws": args.draws,
                "matched": flagged(model, other, picks, True),
                "whole_reference": flagged(model, other, picks, False),
            }
        )
    print(json.dumps(rows, indent=1))
    print("| batch | draws | flagged, reference matched to the batch's mix (shipped) | flagged, whole reference |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['draws']} | {r['matched']:.2f} | {r['whole_reference']:.2f} |")


if __name__ == "__main__":
    main()
