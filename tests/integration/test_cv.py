import csv
import json

import numpy as np
import pytest

from covidct.config import TrainConfig
from covidct.data import Sample, load_splits
from covidct.errors import ConfigError
from covidct.evaluation.metrics import binary_metrics, youden_threshold
from covidct.runs import RunDir
from covidct.studies.cv import cv_folds, fold_rows, near_duplicate_groups, run_cv
from tests.conftest import TINY_COUNTS, make_covidct_layout


def test_folds_partition_the_pool_exactly_and_keep_groups_together():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 20)
    groups = np.arange(50)
    groups[[3, 4, 5]] = 3  # a scan with three near-identical slices
    groups[[40, 41]] = 40
    folds = cv_folds(labels, groups, 5, seed=int(rng.integers(100)))
    together = np.concatenate(folds)
    assert sorted(together.tolist()) == list(range(50))  # every image held out exactly once
    for held in folds:
        assert 5 <= np.sum(labels[held] == 0) <= 7 and 3 <= np.sum(labels[held] == 1) <= 5  # stratified
    for members in ([3, 4, 5], [40, 41]):
        assert sum(set(members) <= set(h.tolist()) for h in folds) == 1
    with pytest.raises(ConfigError, match="folds"):
        cv_folds(labels, groups, 1, 0)
    with pytest.raises(ConfigError, match="smallest class"):
        cv_folds(np.array([0, 0, 0, 1]), np.arange(4), 2, 0)


def test_near_duplicate_groups_join_copies(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    paths = []
    for i in range(4):
        img = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    Image.open(paths[0]).save(tmp_path / "copy.jpg", quality=95)  # the same picture, re-encoded
    samples = [Sample(p, 0) for p in [*paths, tmp_path / "copy.jpg"]]
    groups = near_duplicate_groups(samples)
    assert groups[0] == groups[4] and len(set(groups.tolist())) == 4


def test_fold_rows_keep_test_untouched(tmp_path):
    data = load_splits(make_covidct_layout(tmp_path / "d", TINY_COUNTS))
    pool = data.splits["train"] + data.splits["val"]
    rows = fold_rows(pool, np.array([0, 1, 2]), data.splits["test"], data.class_names)
    assert [r["split"] for r in rows].count("val") == 3
    assert [r["split"] for r in rows].count("test") == len(data.splits["test"])
    assert {r["label"] for r in rows} == set(data.class_names)


@pytest.mark.slow
def test_run_cv_trains_every_fold_and_pools_out_of_fold_scores(tmp_path):
    data_dir = make_covidct_layout(tmp_path / "covid-ct", TINY_COUNTS)
    config = TrainConfig(
        model="timm:resnet10t",
        data_dir=str(data_dir),
        pretrained=False,
        epochs=1,
        batch_size=8,
        num_workers=0,
        out=str(tmp_path / "runs"),
    )
    cv_dir = run_cv(config, folds=2, progress=False)
    summary = json.loads((cv_dir / "cv.json").read_text())
    data = load_splits(data_dir)
    pool = {"/".join(s.path.parts[-2:]) for s in data.splits["train"] + data.splits["val"]}
    oof = list(csv.DictReader((cv_dir / "oof_predictions.csv").open()))
    assert {r["path"] for r in oof} == pool and len(oof) == len(pool)  # each pooled image scored once
    assert len(summary["folds"]) == 2 and summary["out_of_fold"]["n"] == len(pool)
    for k in (1, 2):
        config_k = TrainConfig.from_yaml(cv_dir / f"fold-{k}" / "run" / "config.yaml")
        fold = load_splits(config_k.data_dir, config_k.data_csv)
        assert len(fold.splits["test"]) == len(data.splits["test"])  # the official test split, untouched
        assert len(fold.splits["train"]) + len(fold.splits["val"]) == len(pool)
        assert not config_k.onnx and not RunDir(cv_dir / f"fold-{k}" / "run").scorer_graph_path.exists()  # scored only
    # each fold's figures are its own run's validation evaluation, and the summary averages those
    own = [json.loads((cv_dir / f"fold-{k}" / "run" / "eval-val" / "metrics.json").read_text()) for k in (1, 2)]
    assert [f["val_acc"] for f in summary["folds"]] == pytest.approx([m["accuracy"] for m in own])
    assert [f["n_val"] for f in summary["folds"]] == [m["n"] for m in own] and sum(m["n"] for m in own) == len(pool)
    assert summary["val_acc"]["mean"] == pytest.approx(np.mean([m["accuracy"] for m in own]))
    assert summary["val_acc"]["sd"] == pytest.approx(np.std([m["accuracy"] for m in own], ddof=1))
    pooled = binary_metrics([int(r["label"]) for r in oof], [float(r["score"]) for r in oof], 0.5)
    assert summary["out_of_fold"]["accuracy"] == pytest.approx(pooled.accuracy)
    oof_labels, oof_scores = [int(r["label"]) for r in oof], [float(r["score"]) for r in oof]
    assert summary["out_of_fold"]["youden_threshold"] == pytest.approx(youden_threshold(oof_labels, oof_scores))
    every = list(csv.DictReader((cv_dir / "every_labelled.csv").open()))  # the pool as one training split
    assert sum(r["split"] == "train" for r in every) == len(pool) and not any(r["split"] == "val" for r in every)
    assert sum(r["split"] == "test" for r in every) == len(data.splits["test"])


@pytest.mark.slow
def test_fold_ensemble_chooses_no_threshold_on_validation_it_trained_on(tmp_path):
    """Fold runs validated on different images: the ensemble has no shared validation set."""
    from covidct.evaluation.evaluate import evaluate_run

    data_dir = make_covidct_layout(tmp_path / "covid-ct", TINY_COUNTS)
    config = TrainConfig(
        model="timm:resnet10t",
        data_dir=str(data_dir),
        pretrained=False,
        epochs=1,
        batch_size=8,
        num_workers=0,
        out=str(tmp_path / "runs"),
        tensorboard=False,
    )
    cv_dir = run_cv(config, folds=2, progress=False)
    runs = [cv_dir / f"fold-{k}" / "run" for k in (1, 2)]
    result = evaluate_run(runs, "test", out_dir=tmp_path / "ens", n_bootstrap=0)
    assert [p["name"] for p in result["operating_points"]] == ["default"]
    assert result["validation"].startswith("none shared") and not (tmp_path / "ens" / "val_predictions.csv").exists()


def test_cv_student_trains_one_network_on_every_labelled_image_with_the_out_of_fold_point(tmp_path, capsys):
    from covidct.cli import main
    from covidct.inference.load import load_trained
    from covidct.runs.records import CrossValidation

    data_dir = make_covidct_layout(tmp_path / "covid-ct", TINY_COUNTS)
    flags = ["--model", "timm:resnet10t", "--no-pretrained", "--epochs", "1", "--batch-size", "8", "--num-workers", "0"]
    out = tmp_path / "runs"
    assert main(["cv", "--data-dir", str(data_dir), *flags, "--folds", "2", "--out", str(out), "--student"]) == 0
    cv = CrossValidation.at(next(out.glob("cv-*")))
    assert cv.student is not None and f"student: {cv.student}" in capsys.readouterr().out
    run = RunDir(cv.student)
    config, summary = run.config(), run.summary()
    assert config.teachers == [str(r) for r in cv.runs] and config.monitor == "last" and config.imagenet_probe == 0
    assert summary["distilled_from"] == [str(r) for r in cv.runs]
    trained_on = load_splits(config.data_dir, config.data_csv)
    pool = sum(TINY_COUNTS["train"].values()) + sum(TINY_COUNTS["val"].values())
    assert len(trained_on.splits["train"]) == pool and not trained_on.splits["val"]  # every labelled image
    point = run.threshold_record()
    assert point is not None and point.rule == "youden" and point.where == "out of fold"
    assert point.threshold == pytest.approx(cv.summary["out_of_fold"]["youden_threshold"])
    assert load_trained(cv.student).threshold == pytest.approx(point.threshold)  # what predict and serve use
