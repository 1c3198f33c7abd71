"""Training on several sources, external evaluation (--on) and the leave-one-source-out matrix, through the CLI."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from covidct.cli import main
from covidct.config import TrainConfig
from covidct.training.loaders import make_sampler, source_weights
from tests.conftest import TINY_COUNTS, make_covidct_layout, make_sars_layout

TINY = [
    "--model",
    "timm:resnet10t",
    "--no-pretrained",
    "--no-onnx",  # no test here reads the ONNX graph: 4 of a tiny training's 6 s
    "--batch-size",
    "8",
    "--num-workers",
    "0",
    "--lr",
    "1e-3",
    "--no-tensorboard",
]


@pytest.fixture
def two_sources(tmp_path):
    return (
        make_covidct_layout(tmp_path / "covid-ct", TINY_COUNTS),
        make_sars_layout(tmp_path / "sars", 14, 14),
    )


def test_each_source_weighs_the_same_per_epoch():
    w = source_weights(["a"] * 30 + ["b"] * 10)
    assert w[:30].sum() == pytest.approx(w[30:].sum())


def test_sampler_draws_sources_equally_and_is_seeded(two_sources):
    from covidct.data import ImageDataset
    from covidct.data.sources import load_sources

    a, b = two_sources
    data = load_sources([f"covid-ct={a}", f"sars-cov-2-ct={b}"])
    ds = ImageDataset(data.splits["train"])
    config = TrainConfig(sources=["x", "y"], samples_per_epoch=2000, seed=3)
    draws = list(make_sampler(ds, config))  # (index, seed of that draw's augmentation)
    share = sum(ds.samples[i].source == "covid-ct" for i, _ in draws) / len(draws)
    assert len(draws) == 2000 and 0.45 < share < 0.55  # 16 of 36 training images, half of the draws
    assert draws == list(make_sampler(ds, config))
    assert len({seed for _, seed in draws}) == 2000  # a fresh seed per draw, also for an image drawn twice
    plain = make_sampler(ds, TrainConfig(source_balance=False, seed=3))  # no balance, no epoch size: a shuffle
    first, second = [i for i, _ in plain], [i for i, _ in plain]
    assert sorted(first) == list(range(len(ds))) and first != second  # each image once per epoch, reshuffled


def test_two_source_training_external_evaluation_and_card(two_sources, tmp_path, capsys):
    a, b = two_sources
    args = [
        "train",
        *TINY,
        "--epochs",
        "2",
        "--source",
        f"covid-ct={a}",
        "--source",
        f"sars-cov-2-ct={b}",
        "--monitor",
        "val_auc_mean",
        "--crop",
        "lung",
        "--augment",
        "robust",
        "--out",
        str(tmp_path / "runs"),
    ]
    assert main(args) == 0
    run = next((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["sources"]) == {"covid-ct", "sars-cov-2-ct"} and summary["source_balance"] is True
    assert summary["monitor"] == "val_auc_mean" and any("no patient IDs" in n for n in summary["notes"])
    history = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert len(history) == 2
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["preprocessing"]["crop"] == "lung"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    stopping = next(k for k in last["callbacks"] if k.startswith("EarlyStopping"))
    assert "'monitor': 'val_auc_mean'" in stopping  # early stopping watched the explicit monitor
    assert "optimizer_states" not in ckpt and "optimizer_states" in last  # best: weights only; last: for resume
    card = json.loads((run / "ood" / "ood.json").read_text())
    assert card["fitted_on"] == ["covid-ct", "sars-cov-2-ct"] and "framing" in card
    # one detector per source (one Gaussian over both would put the smaller source in its tail), each with all halves
    assert "pixels" in card and [o["source"] for o in card["sources"]] == ["sars-cov-2-ct"]
    assert [p["source"] for p in card["per_source"]] == ["covid-ct", "sars-cov-2-ct"]
    assert [p["n_train"] for p in card["per_source"]] == [16, 16] and card["sources"][0]["threshold_on"] == "val"

    assert main(["evaluate", str(run), "--split", "test", "--bootstrap", "0"]) == 0
    m = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert set(m["per_source"]) == {"covid-ct", "sars-cov-2-ct"}
    assert sum(v["n"] for v in m["per_source"].values()) == m["n"]
    rows = list(csv.DictReader((run / "eval-test" / "predictions.csv").read_text().splitlines()))
    assert {r["source"] for r in rows} == {"covid-ct", "sars-cov-2-ct"}

    other = make_sars_layout(tmp_path / "elsewhere", 5, 6, seed=9)  # a set the model never saw
    assert main(["evaluate", str(run), "--on", f"hospital={other}", "--bootstrap", "0"]) == 0
    ext = json.loads((run / "eval-hospital" / "metrics.json").read_text())
    assert ext["n"] == 11 and ext["external"] == {"set": f"hospital={other}", "images_seen_in_training": 0}
    drivers = ext["score_drivers"]  # what the scores follow on the external set, one entry per statistic
    assert set(drivers["statistics"]) == {"width", "height", "file_kb", "mean_grey", "grey_std", "dark_share"}
    assert drivers["strongest"] in drivers["statistics"] and "scores follow" in capsys.readouterr().out
    assert m.get("score_drivers") is None  # a split of the run's own data: not an external set
    from tests.medical_files import chest_hu, write_dicom

    dicoms = tmp_path / "pacs"  # a hospital's labelled DICOM slices, as exported: a folder per patient
    for label, covid in (("COVID", True), ("NonCOVID", False)):
        for patient in (1, 2):
            (dicoms / label / f"{label}-{patient}").mkdir(parents=True)
            write_dicom(dicoms / label / f"{label}-{patient}" / "a.dcm", chest_hu(96, covid=covid, seed=patient))
            write_dicom(dicoms / label / f"{label}-{patient}" / "IM0002", chest_hu(96, covid=covid, seed=9 + patient))
    write_dicom(dicoms / "COVID" / "COVID-1" / "IM0003", chest_hu(96, lungs=False, seed=5))  # below the lungs
    capsys.readouterr()
    assert main(["evaluate", str(run), "--on", f"pacs={dicoms}", "--bootstrap", "0", "--per-group"]) == 0
    pacs = json.loads((run / "eval-pacs" / "metrics.json").read_text())
    assert pacs["n"] == 9 and pacs["score_drivers"]["statistics"]["width"]["spearman"] is None  # all 96 px wide
    per_patient = pacs["per_group"]  # each patient's two slices scored as one
    assert per_patient["groups"] == 4 and per_patient["aggregation"] == "top10_mean"
    assert per_patient["tp"] + per_patient["fn"] == 2 and per_patient["tn"] + per_patient["fp"] == 2
    groups = list(csv.DictReader((run / "eval-pacs" / "group_predictions.csv").read_text().splitlines()))
    slices = list(csv.DictReader((run / "eval-pacs" / "predictions.csv").read_text().splitlines()))
    covid_1 = [float(r["score"]) for r in slices if "COVID-1" in r["path"] and "NonCOVID" not in r["path"]]
    row = next(r for r in groups if r["group"].endswith("COVID-1") and "NonCOVID" not in r["group"])
    assert row["slices"] == "3" and row["slices_counted"] == "2"  # the slice below the lungs does not count
    in_lung = [float(r["score"]) for r in slices if "/COVID/COVID-1/" in r["path"] and "IM0003" not in r["path"]]
    assert float(row["score"]) == pytest.approx(max(in_lung), abs=1e-5) and max(in_lung) <= max(covid_1)
    assert "per group (4 groups" in capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    external_rows = (run / "report.html").read_text().split('<section id="external">')[1].split("</section>")[0]
    assert "hospital" in external_rows and "scores follow" in external_rows
    assert "pacs: per group" in external_rows and "4 groups, top10_mean" in external_rows
    capsys.readouterr()
    assert main(["evaluate", str(run), "--on", f"sars-cov-2-ct={b}", "--bootstrap", "0"]) == 0
    err = capsys.readouterr().err  # the CLI prints a warning as one line, not Python's file:line and source echo
    assert "covidct: warning:" in err and "same content as images the run trained" in err and "warnings.warn" not in err
    seen = json.loads((run / "eval-sars-cov-2-ct" / "metrics.json").read_text())["external"]
    assert seen["images_seen_in_training"] >= 20  # train + val of that source

    assert main(["export", str(run)]) == 0
    card = json.loads((run / "export" / "model.json").read_text())
    assert set(card["training_data"]["sources"]) == {"covid-ct", "sars-cov-2-ct"}
    assert {"test", "hospital", "sars-cov-2-ct"} <= set(card["validated_on"])


def test_bad_sources_are_one_clear_error(tmp_path, capsys):
    assert main(["train", *TINY, "--source", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown source 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_crosssource_matrix(two_sources, tmp_path):
    a, b = two_sources
    out = tmp_path / "xs"
    args = [
        "crosssource",
        *TINY,
        "--epochs",
        "1",
        "--source",
        f"covid-ct={a}",
        "--source",
        f"sars-cov-2-ct={b}",
        "--out-dir",
        str(out),
    ]
    assert main(args) == 0
    matrix = json.loads((out / "matrix.json").read_text())
    trained = [t["trained_on"] for t in matrix["trainings"]]
    assert trained == [["covid-ct"], ["sars-cov-2-ct"], ["covid-ct", "sars-cov-2-ct"]]
    first = matrix["trainings"][0]["cells"]
    assert first["sars-cov-2-ct"]["held_out"] and first["sars-cov-2-ct"]["n"] == 28  # every image of it
    assert not first["covid-ct"]["held_out"] and first["covid-ct"]["n"] == 8  # its own test split
    assert (out / "matrix.png").stat().st_size > 1000 and "held out" in (out / "matrix.csv").read_text()
    # every cell's images with their scores, beside the run that scored them, at the cell's threshold
    first_run = Path(matrix["trainings"][0]["run"])
    rows = list(csv.DictReader((first_run / "scores-sars-cov-2-ct.csv").read_text().splitlines()))
    assert len(rows) == 28 and all(Path(r["path"]).is_relative_to(b) for r in rows)
    threshold = matrix["trainings"][0]["threshold"]
    assert all(int(r["predicted"]) == (float(r["score"]) >= threshold) for r in rows)
    accuracy = np.mean([int(r["correct"]) for r in rows])
    assert accuracy == pytest.approx(first["sars-cov-2-ct"]["accuracy"], abs=1e-6)
    # what the held-out scores follow: in every held-out cell, and named in matrix.md; never for in-source cells
    assert "score_drivers" in first["sars-cov-2-ct"] and "score_drivers" not in first["covid-ct"]
    drivers = first["sars-cov-2-ct"]["score_drivers"]["statistics"]
    from scipy.stats import spearmanr

    heights = [Image.open(r["path"]).height for r in rows]
    scores = [float(r["score"]) for r in rows]
    rho = spearmanr(scores, heights)[0]
    assert drivers["height"]["spearman"] == (pytest.approx(rho) if np.ptp(heights) else None)
    assert "covid-ct -> sars-cov-2-ct: scores follow" in (out / "matrix.md").read_text()


def test_crosssource_over_seeds_keeps_each_matrix_and_their_spread(two_sources, tmp_path, capsys):
    a, b = two_sources
    out = tmp_path / "xs"
    args = [
        "crosssource",
        *TINY,
        "--epochs",
        "1",
        "--source",
        f"covid-ct={a}",
        "--source",
        f"sars-cov-2-ct={b}",
        "--seeds",
        "3",
        "4",
        "--out-dir",
        str(out),
    ]
    assert main(args) == 0
    per_seed = [json.loads((out / f"seed-{s}" / "matrix.json").read_text()) for s in (3, 4)]
    assert [m["config"]["seed"] for m in per_seed] == [3, 4]
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [3, 4] and len(summary["cells"]) == 6  # 3 trainings x 2 sources
    cell = next(c for c in summary["cells"] if c["held_out"] and c["trained_on"] == ["covid-ct"])
    assert cell["auc"]["values"] == [m["trainings"][0]["cells"]["sars-cov-2-ct"]["auc"] for m in per_seed]
    assert "Mean held-out-source AUC" in (out / "seeds.md").read_text() and "seeds.md" in capsys.readouterr().out
    assert main([*args[:-5], "--seeds", "3", "3", "--out-dir", str(tmp_path / "dup")]) == 2  # one clear error
    assert "distinct seeds" in capsys.readouterr().err and not (tmp_path / "dup").exists()
