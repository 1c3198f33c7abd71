"""covidct.api, as a notebook uses it: load a model, score a folder into a DataFrame, explain an image, evaluate a run,
choose an operating point, train from a dict; errors are covidct's typed exceptions with the command line's message."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import covidct.api as cct
from tests.conftest import TINY_COUNTS, make_covidct_layout, synthetic_ct


def _folder(tmp_path, n=6):
    rng = np.random.default_rng(8)
    folder = tmp_path / "slices"
    folder.mkdir()
    for k in range(n):
        Image.fromarray(synthetic_ct(rng, k % 2 == 0, (64, 48))).save(folder / f"{k}.png")
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return folder


def test_load_predict_frame_and_explain(exported_model, tmp_path):
    model = cct.load(exported_model)
    assert model.class_names == ["NonCOVID", "COVID"] and 0 <= model.threshold <= 1
    assert model.card["architecture"] == "timm:resnet10t"
    result = model.predict(_folder(tmp_path))
    frame = result.to_frame()
    assert len(frame) == 6 and set(frame["label"]) <= {"NonCOVID", "COVID"}
    assert frame["score"].between(0, 1).all() and any("cut.png" in s for s in result.skipped)
    assert result.shift["n"] == 6
    typed = result.results
    assert [r.score for r in typed] == list(frame["score"]) and all(r.threshold == model.threshold for r in typed)
    assert all(r.label == ("COVID" if r.score >= r.threshold else "NonCOVID") for r in typed)
    assert all(isinstance(r.in_distribution, bool) and (r.in_distribution or r.ood_reason) for r in typed)
    heat = model.explain(tmp_path / "slices" / "0.png")
    assert heat.shape == (48, 64) and heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0


def test_errors_are_typed_with_the_command_lines_message(tmp_path):
    with pytest.raises(cct.ModelError, match="does not exist"):
        cct.load(tmp_path / "nowhere")
    with pytest.raises(cct.CovidCTError):
        cct.train({"epochs": 0})


def test_evaluate_threshold_and_train(own_run, tmp_path):
    metrics = cct.evaluate(own_run, "test", n_bootstrap=0)
    assert metrics["n"] == sum(TINY_COUNTS["test"].values()) and 0 <= metrics["auc"] <= 1
    record = cct.choose_threshold(own_run, "youden")
    assert record["rule"] == "youden" and json.loads((own_run / "threshold.json").read_text())["rule"] == "youden"
    assert cct.load(own_run).threshold == pytest.approx(record["threshold"])
    written = cct.export(own_run, "safetensors", tmp_path / "exported")
    assert tmp_path / "exported" / "model.safetensors" in written
    assert cct.load(tmp_path / "exported").threshold == pytest.approx(record["threshold"])  # the export carries it
    data = make_covidct_layout(tmp_path / "d", TINY_COUNTS)
    config = {"model": "timm:resnet10t", "data_dir": str(data), "pretrained": False, "epochs": 1, "batch_size": 8}
    run = cct.train({**config, "num_workers": 0, "out": str(tmp_path / "runs"), "precision": "32", "onnx": False})
    assert (run / "checkpoints" / "best.ckpt").is_file()


def test_train_calls_the_progress_function_after_each_epoch(tmp_path):
    data = make_covidct_layout(tmp_path / "d", TINY_COUNTS)
    rows = []
    config = {"model": "timm:resnet10t", "data_dir": str(data), "pretrained": False, "epochs": 2, "batch_size": 8}
    config |= {"num_workers": 0, "out": str(tmp_path / "runs"), "precision": "32", "onnx": False, "ood": False}
    run = cct.train(config, progress=rows.append)
    assert [(r["epoch"], r["epochs"]) for r in rows] == [(1, 2), (2, 2)]
    assert all(0 <= r["val_auc"] <= 1 for r in rows) and (run / "metrics.csv").is_file()


def test_learning_curve_and_adapt(trained_run, tmp_path):
    from tests.integration.test_adapt import site_csv

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    site = cct.load_site(run, f"site={site_csv(tmp_path / 'site')}", group_duplicates=False)
    assert site.name == "site" and set(site.group_counts()) == {0, 1}
    curve = cct.learning_curve(run, site, ks=(1, 2), draws=2)
    assert {(r["strategy"], r["k"]) for r in curve} >= {("head", 1), ("head", 2)}
    assert all(0 <= r["auc"] <= 1 for r in curve) and (run / "curve-site" / "curve.md").is_file()
    adapted = cct.adapt(run, site, strategy="head", out=tmp_path / "adapted")
    assert adapted.record["site"] == "site" and adapted.run.parent == tmp_path / "adapted"
    recorded = json.loads((adapted.run / "threshold.json").read_text())["threshold"]
    assert cct.load(adapted.run).threshold == pytest.approx(recorded)
    with pytest.raises(cct.ConfigError, match="plan's fields"):
        cct.learning_curve(run, site, k=(1, 2))
    with pytest.raises(cct.ConfigError, match="ks must be whole numbers"):
        cct.learning_curve(run, site, cct.CurvePlan(ks=(0,)))
    with pytest.raises(cct.DataError):
        cct.learning_curve(run, f"one={tmp_path / 'nowhere'}")


def test_cross_validate_gives_the_folder_its_summary_and_the_fold_runs(tmp_path):
    data = make_covidct_layout(tmp_path / "d", TINY_COUNTS)
    config = {"model": "timm:resnet10t", "data_dir": str(data), "pretrained": False, "epochs": 1, "batch_size": 8}
    cv = cct.cross_validate({**config, "num_workers": 0, "out": str(tmp_path / "runs"), "precision": "32"}, folds=2)
    pool = sum(TINY_COUNTS["train"].values()) + sum(TINY_COUNTS["val"].values())
    assert cv.folder.parent == tmp_path / "runs" and cv.summary["out_of_fold"]["n"] == pool
    assert cv.runs == [cv.folder / f"fold-{k}" / "run" for k in (1, 2)] and all(r.is_dir() for r in cv.runs)
    assert cv.every_labelled.is_file() and "youden_threshold" in cv.summary["out_of_fold"]
    with pytest.raises(cct.ConfigError, match="folds"):
        cct.cross_validate(config, folds=1)


def test_app_serves_the_model_with_the_settings(exported_model, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    png = (_folder(tmp_path) / "0.png").read_bytes()
    client = TestClient(cct.app(exported_model))
    answer = client.post("/api/v1/predict", files={"file": ("0.png", png)}).json()
    want = cct.load(exported_model).predict(tmp_path / "slices" / "0.png").results[0].score
    assert answer["score"] == pytest.approx(want, abs=1e-6)
    locked = TestClient(cct.app(cct.load(exported_model), cct.ServeSettings(api_key=["k1"], shift_window=10)))
    assert locked.get("/api/v1/model").status_code == 401
    assert locked.get("/api/v1/model", headers={"X-API-Key": "k1"}).status_code == 200
    monkeypatch.setenv("COVIDCT_API_KEY", "from-env, other")
    assert cct.ServeSettings().keys() == ["from-env", "other"]  # none given: the environment's, as serve reads them
    with pytest.raises(cct.ConfigError, match="at least 10 images"):
        cct.ServeSettings(shift_window=5)
    with pytest.raises(cct.ConfigError, match="between 0 and 1000"):
        cct.ServeSettings(batch_wait_ms=5000)


def test_fit_detector_refits_the_runs_detector_by_the_recipe(own_run, tmp_path):
    from covidct.ood.fit import DetectorRecipe

    record = cct.fit_detector(own_run, DetectorRecipe("knn", 90.0))
    assert record["method"] == "knn" and record["percentile"] == 90.0 and record["n_train"] > 0
    assert json.loads((own_run / "ood" / "ood.json").read_text())["method"] == "knn"  # saved with the run
    with pytest.raises(cct.ConfigError, match="is for an adapted run"):
        cct.fit_detector(own_run, site=f"x={tmp_path}")


def test_compare_report_and_study_are_the_commands_results(own_run, tmp_path, capsys):
    from covidct.cli import main

    cct.evaluate(own_run, "test", n_bootstrap=0)
    rows = cct.compare([own_run, own_run])
    assert [r["run"] for r in rows] == [own_run.name] * 2 and rows[0]["auc"] == rows[1]["auc"]
    assert main(["compare", str(own_run), str(own_run), "--out", str(tmp_path / "cmp")]) == 0
    assert rows[0]["auc_95ci"] in capsys.readouterr().out  # the command prints the API's rows
    text = cct.study(own_run)
    assert "study: VGG-19-bn" in text and f"covidct: {rows[0]['model']} (this run)" in text
    page = cct.report(own_run)
    assert page == own_run / "report.html" and "<html" in page.read_text()[:500].lower()


def test_a_damaged_evaluation_is_refused_by_name_with_its_fix(own_run):
    cct.evaluate(own_run, "test", n_bootstrap=0)
    metrics = own_run / "eval-test" / "metrics.json"
    record = json.loads(metrics.read_text())
    del record["auc"]
    metrics.write_text(json.dumps(record))
    with pytest.raises(cct.ModelError, match=r"metrics.json: field 'auc' field required.*covidct evaluate"):
        cct.compare([own_run])
    metrics.write_text("{not json")
    with pytest.raises(cct.ModelError, match=r"metrics.json is not readable JSON .*covidct evaluate"):
        cct.study(own_run)
