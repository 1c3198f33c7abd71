"""Folds keep a sample's own group (patient, paper, subfolder) together, joined with near-duplicate clusters."""

from pathlib import Path

import numpy as np

from covidct.data import Sample
from covidct.data.datasets import covid_ct_group
from covidct.studies.cv import cv_folds, with_sample_groups


def test_sample_groups_and_near_duplicate_clusters_are_joined():
    samples = [Sample(Path(f"{i}.png"), i % 2, group=g) for i, g in enumerate(["p1", "p1", "", "p2", "", "p2"])]
    near_duplicates = np.array([0, 1, 2, 2, 4, 5])  # 2 and 3 are near-duplicates; 4 is alone
    ids = with_sample_groups(near_duplicates, samples)
    assert ids[0] == ids[1]  # same patient
    assert ids[2] == ids[3] == ids[5]  # 2~3 near-duplicates, 3 and 5 one patient
    assert len({ids[0], ids[2], ids[4]}) == 3  # nothing else joined
    plain = with_sample_groups(np.arange(6), [Sample(Path(f"{i}.png"), 0) for i in range(6)])
    assert len(np.unique(plain)) == 6


def test_folds_never_split_a_paper_of_covid_ct():
    names = [f"paper{p}-p{k}-1.png" for p in range(12) for k in range(3)] + [
        f"{c}%{k}.jpg" for c in range(12) for k in range(3)
    ]
    samples = [Sample(Path(n), int("%" not in n), group=covid_ct_group(n)) for n in names]
    ids = with_sample_groups(np.arange(len(samples)), samples)
    folds = cv_folds(np.array([s.label for s in samples]), ids, folds=4, seed=0)
    for held in folds:
        inside = {samples[i].group for i in held}
        outside = {samples[i].group for i in range(len(samples)) if i not in set(held)}
        assert not inside & outside  # no paper (or case) on both sides of a fold
    assert sorted(int(i) for f in folds for i in f) == list(range(len(samples)))
