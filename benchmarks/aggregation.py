"""How a volume's score should be made from its slices' scores (issue 14.6), measured with the sources we have.

Real slices of one class are stacked into pseudo-volumes: a non-COVID volume is N non-COVID slices; a COVID volume
has m COVID slices among N - m non-COVID ones (few involved slices is the hard, realistic case). The slice scores
come from a trained run scoring a source's test split (slices it never trained on), so the volumes are built
from held-out scores. Reported: the volume-level AUC of each aggregation for each m, over many random volumes.
Limits: slices of different patients are mixed in one pseudo-volume (the sources publish no patient IDs), and
the neighbouring-slice correlation of real volumes is absent.

    .venv/bin/python benchmarks/aggregation.py RUN_DIR --source sars-cov-2-ct=../shared/datasets/sars-cov-2-ct
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def simulate(neg: np.ndarray, pos: np.ndarray, n: int, m: int, volumes: int, rng: np.random.Generator) -> dict:
    from sklearn.metrics import roc_auc_score

    from covidct.verdict import AGGREGATIONS

    out = {}
    for name, (fn, _) in AGGREGATIONS.items():
        scores, labels = [], []
        for _ in range(volumes):
            scores.append(fn(rng.choice(neg, n, replace=True)))
            labels.append(0)
            scores.append(fn(np.concatenate([rng.choice(neg, n - m, replace=True), rng.choice(pos, m, replace=True)])))
            labels.append(1)
        out[name] = round(float(roc_auc_score(labels, scores)), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--source", required=True)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--volumes", type=int, default=300)
    args = ap.parse_args()
    from covidct.data import ImageDataset
    from covidct.data.sources import load_source
    from covidct.evaluation.scoring import predict_scores
    from covidct.inference.load import load_checkpoint
    from covidct.runs import RunDir

    run = RunDir.at(args.run)
    model = load_checkpoint(run.checkpoint("best"), run)
    samples = load_source(args.source).splits["test"]
    _, labels, scores = predict_scores(model, ImageDataset(samples, model.transform))
    neg, pos = scores[labels == 0], scores[labels == 1]
    rng = np.random.default_rng(0)
    table = {m: simulate(neg, pos, args.slices, m, args.volumes, rng) for m in (1, 2, 4, 8, 20, 40)}
    print(
        json.dumps(
            {
                "run": str(run.path),
                "source": args.source,
                "slices_per_volume": args.slices,
                "volumes_per_class": args.volumes,
                "positive_slices": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
