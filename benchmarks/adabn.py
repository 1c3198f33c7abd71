"""Test-time adaptation of batch-norm statistics (AdaBN, Li et al. 2016) on a held-out source: does re-estimating
the normalisation statistics on the new source's unlabelled images move a model's held-out AUC?

    .venv/bin/python benchmarks/adabn.py RUN SET     e.g. RUN = a covid-ct run, SET = sars-cov-2-ct=../shared/...

Prints the plain AUC on SET, then with BN statistics re-estimated (labels never used) on: all of SET (transductive),
a random half of SET with the other half scored (inductive), and random batches of 32 / 128 images each adapted to
itself (a series at a time). Results: benchmarks/GENERALIZATION.md, "Test-time adaptation"."""

import copy
import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from covidct.data.sources import external_set
from covidct.evaluation.scoring import eval_dataset, load_classifier, predict_scores
from covidct.runs import find_checkpoint


def adapt(module: torch.nn.Module, x: torch.Tensor, idx: np.ndarray) -> torch.nn.Module:
    """A copy of `module` whose BN running statistics are the plain average over the images x[idx]."""
    net = copy.deepcopy(module)
    for mod in net.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average, not an exponential one
    net.train()
    with torch.no_grad():
        for i in range(0, len(idx), 64):
            net(x[idx[i : i + 64]])
    return net.eval()


@torch.no_grad()
def score(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return torch.cat([net(x[i : i + 128]).float().softmax(1)[:, 1] for i in range(0, len(x), 128)]).numpy()


def main(run: str, on: str) -> None:
    torch.set_num_threads(2)
    t0 = time.time()
    m = load_classifier(find_checkpoint(run, "best"))
    _, samples = external_set(on)
    ds = eval_dataset(m, samples)
    _, labels, s0 = predict_scores(m, ds, batch_size=64)
    print("plain AUC", round(roc_auc_score(labels, s0), 3), f"{time.time() - t0:.0f}s", flush=True)
    x = torch.cat([b["image"] for b in DataLoader(ds, batch_size=64)])  # the model's own preprocessing, once
    perm = np.random.default_rng(0).permutation(len(x))
    half_a, half_b = perm[: len(x) // 2], perm[len(x) // 2 :]
    s1 = score(adapt(m.module, x, perm), x)
    print("AdaBN all AUC", round(roc_auc_score(labels, s1), 3), f"{time.time() - t0:.0f}s", flush=True)
    s_b = score(adapt(m.module, x, half_a), x[half_b])
    print(
        "AdaBN A->B AUC",
        round(roc_auc_score(labels[half_b], s_b), 3),
        "plain B",
        round(roc_auc_score(labels[half_b], s0[half_b]), 3),
        flush=True,
    )
    for n in (32, 128):
        sc = np.zeros(len(x))
        for i in range(0, len(x), n):
            idx = perm[i : i + n]
            sc[idx] = score(adapt(m.module, x, idx), x[idx])
        print(f"AdaBN per {n} random AUC", round(roc_auc_score(labels, sc), 3), flush=True)
    t = m.threshold
    print(
        "threshold",
        t,
        "acc plain",
        ((s0 >= t) == labels).mean().round(3),
        "acc adabn",
        ((s1 >= t) == labels).mean().round(3),
    )
    print(f"{time.time() - t0:.0f}s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
