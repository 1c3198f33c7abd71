"""The leave-one-source-out plan and what its matrix says it cannot show (no training here)."""

import pytest

from covidct.config import TrainConfig
from covidct.errors import ConfigError
from covidct.studies.crosssource import caveats, seed_summary, trainings


def test_two_sources_train_each_alone_then_both_and_three_add_the_leave_one_out_rows():
    assert trainings(["a", "b"]) == [["a"], ["b"], ["a", "b"]]
    assert trainings(["a", "b", "c"]) == [["a"], ["b"], ["c"], ["b", "c"], ["a", "c"], ["a", "b"], ["a", "b", "c"]]


def test_the_matrix_names_its_seed():
    plain = caveats(TrainConfig(seed=7))
    assert len(plain) == 1 and "seed 7" in plain[0]


def _matrix(seed: int, held: float, own: float) -> dict:
    cells = {
        "a": {"auc": own, "accuracy": 0.8, "held_out": False},
        "b": {"auc": held, "accuracy": 0.5, "held_out": True},
    }
    return {"config": {"seed": seed}, "trainings": [{"trained_on": ["a"], "cells": cells}], "mean_held_out_auc": held}


def test_a_seed_summary_gives_each_cells_mean_and_spread_over_the_seeds():
    summary = seed_summary([_matrix(42, 0.50, 0.80), _matrix(7, 0.60, 0.90), _matrix(1, 0.55, 0.85)])
    assert summary["seeds"] == [42, 7, 1]
    held = next(c for c in summary["cells"] if c["held_out"])
    assert held["scored_on"] == "b" and held["auc"]["values"] == [0.50, 0.60, 0.55]
    assert held["auc"]["mean"] == pytest.approx(0.55) and held["auc"]["sd"] == pytest.approx(0.05)
    assert (held["auc"]["min"], held["auc"]["max"]) == (0.50, 0.60) and held["accuracy_mean"] == pytest.approx(0.5)
    assert summary["mean_held_out_auc"]["mean"] == pytest.approx(0.55)
    assert seed_summary([_matrix(42, 0.5, 0.8)])["cells"][0]["auc"]["sd"] is None  # one seed: no spread
    other = _matrix(7, 0.6, 0.9)
    other["trainings"][0]["trained_on"] = ["b"]
    with pytest.raises(ConfigError, match="same sources"):
        seed_summary([_matrix(42, 0.5, 0.8), other])
