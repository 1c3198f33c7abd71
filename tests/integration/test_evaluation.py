import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from covidct.errors import ModelError
from covidct.evaluation.compare import compare_runs, read_predictions
from covidct.evaluation.evaluate import evaluate_run
from covidct.evaluation.metrics import binary_metrics, youden_threshold
from covidct.evaluation.scoring import ensemble_mean, eval_dataset, load_classifier, predict_scores
from covidct.evaluation.statistics import wilson_interval
from covidct.evaluation.writing import metrics_table
from covidct.fileio.tables import interval_text
from covidct.runs import RunDir, find_checkpoint
from tests.conftest import perturbed_copy


def test_metrics_json_agrees_with_predictions_csv(own_run):
    result = evaluate_run(own_run, "test")
    out = own_run / "eval-test"
    saved = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == saved["n"] == 8
    labels = [int(r["label"]) for r in rows]
    scores = [float(r["score"]) for r in rows]
    assert [int(r["prediction"]) for r in rows] == [int(s >= saved["threshold"]) for s in scores]
    again = binary_metrics(labels, scores, saved["threshold"])
    for key in ("accuracy", "sensitivity", "specificity", "tp", "tn", "fp", "fn"):
        assert saved[key] == pytest.approx(getattr(again, key), abs=1e-6), key
    if not math.isnan(again.auc):
        assert saved["auc"] == pytest.approx(again.auc, abs=1e-4)
    assert saved["tp"] + saved["tn"] + saved["fp"] + saved["fn"] == saved["n"]
    assert result["positive_class"] == "COVID" and saved["split"] == "test"
    assert len({r["path"] for r in rows}) == 8


def test_figures_are_real_pngs(own_run):
    evaluate_run(own_run, "val")
    out = own_run / "eval-val"
    for name in ("confusion_matrix", "roc_curve", "training_curves", "misclassified_scores", "pr_curve", "reliability"):
        img = Image.open(out / f"{name}.png")
        arr = np.asarray(img.convert("L"))
        assert img.size[0] > 200 and img.size[1] > 200, name
        assert arr.std() > 5, f"{name}.png is blank"


def test_calibration_report(trained_run, tmp_path):
    from covidct.evaluation.calibration import apply_temperature, expected_calibration_error, fit_temperature

    r = evaluate_run(trained_run, "test", out_dir=tmp_path / "c", n_bootstrap=0, calibrate=True)
    cal = r["calibration"]
    val = list(csv.DictReader((tmp_path / "c" / "val_predictions.csv").open()))
    vy, vs = [int(v["label"]) for v in val], [float(v["score"]) for v in val]
    # the temperature is the one fitted on the validation scores (not on test), to the precision stored
    assert cal["fitted_on"] == "val" and cal["temperature"] == pytest.approx(fit_temperature(vy, vs), rel=1e-3)
    rows = list(csv.DictReader((tmp_path / "c" / "predictions.csv").open()))
    y, s = [int(v["label"]) for v in rows], [float(v["score"]) for v in rows]
    assert cal["ece"] == pytest.approx(expected_calibration_error(y, s), abs=1e-4)
    assert cal["ece_calibrated"] == pytest.approx(
        expected_calibration_error(y, apply_temperature(s, cal["temperature"])), abs=1e-4
    )


def test_threshold_override(trained_run, tmp_path):
    r = evaluate_run(trained_run, "test", threshold=0.0, out_dir=tmp_path / "t0")
    assert r["sensitivity"] == 1.0 and r["specificity"] == 0.0 and r["threshold"] == 0.0


def test_compare(own_run, tmp_path):
    from covidct.evaluation.statistics import delong_paired_test

    evaluate_run(own_run, "test", n_bootstrap=0)
    copy = tmp_path / "copy-run"
    shutil.copytree(own_run, copy)
    rows = compare_runs([own_run, copy])
    assert rows[1]["auc_diff_vs_first"] == 0 and rows[1]["p_delong"] == 1.0  # same scores: no difference
    other = perturbed_copy(own_run, tmp_path / "other-run")
    evaluate_run(other, "test", n_bootstrap=0)
    rows = compare_runs([own_run, other])
    assert [r["run"] for r in rows] == [own_run.name, "other-run"]
    first, second = (read_predictions(r / "eval-test" / "predictions.csv") for r in (own_run, other))
    keys = sorted(first)
    y = [first[k][0] for k in keys]
    test = delong_paired_test(y, [second[k][1] for k in keys], [first[k][1] for k in keys])
    assert [first[k][1] for k in keys] != [second[k][1] for k in keys]  # two models, two sets of scores
    assert rows[1]["auc_diff_vs_first"] == pytest.approx(test.difference, abs=1e-3)
    assert rows[1]["p_delong"] == pytest.approx(test.p_value, abs=1e-3)
    for run, row in zip((own_run, other), rows):
        saved = json.loads((run / "eval-test" / "metrics.json").read_text())
        assert row["accuracy"] == pytest.approx(saved["accuracy"], abs=1e-3) and row["n"] == saved["n"]
        lo, hi = saved["ci95"]["accuracy"]["wilson"]
        assert row["accuracy_95ci"] == interval_text([lo, hi])
    with pytest.raises(ModelError, match="no val evaluation"):
        compare_runs([tmp_path], split="val")


def test_run_without_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ModelError, match=r"has no checkpoint checkpoints/best\.ckpt"):
        find_checkpoint(tmp_path / "run")
    with pytest.raises(ModelError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")


def test_corrupt_checkpoint_is_named(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"junk")
    with pytest.raises(ModelError, match=r"best\.ckpt is not a PyTorch checkpoint"):
        evaluate_run(run, "test")


def test_config_differences():
    from covidct.evaluation.compare import config_differences

    a = {"model": "vgg16", "lr": 1e-3, "out": "x", "seed": 1}
    b = {"model": "vgg19_bn", "lr": 1e-3, "out": "y", "seed": 1}
    assert config_differences([a, b]) == ["model=vgg16", "model=vgg19_bn"]
    assert config_differences([a, a]) == ["", ""]


def test_intervals_and_operating_points_chosen_on_validation(trained_run, tmp_path):
    from covidct.evaluation.metrics import threshold_for_sensitivity, youden_threshold

    r = evaluate_run(trained_run, "test", out_dir=tmp_path / "e", n_bootstrap=200, min_sensitivity=0.9)
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["bootstrap"]["resamples"] == 200
    tp, tn, fp, fn, n = (saved[k] for k in ("tp", "tn", "fp", "fn", "n"))
    counts = {"accuracy": (tp + tn, n), "sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp)}
    for name, (k, n) in counts.items():
        expected = wilson_interval(k, n)
        assert saved["ci95"][name]["wilson"] == pytest.approx([expected.low, expected.high], abs=1e-4), name
    assert set(saved["ci95"]["auc"]) >= {"delong", "bootstrap"}
    val = list(csv.DictReader((tmp_path / "e" / "val_predictions.csv").open()))
    vy, vs = [int(v["label"]) for v in val], [float(v["score"]) for v in val]
    points = {p["name"]: p for p in r["operating_points"]}
    assert points["default"]["threshold"] == 0.5
    if len(set(vy)) == 2:
        assert points["youden"]["threshold"] == pytest.approx(youden_threshold(vy, vs), abs=1e-5)
        assert points["sensitivity>=0.9"]["threshold"] == pytest.approx(
            threshold_for_sensitivity(vy, vs, 0.9), abs=1e-5
        )
    rows = list(csv.DictReader((tmp_path / "e" / "predictions.csv").open()))
    y, s = [int(v["label"]) for v in rows], [float(v["score"]) for v in rows]
    for p in r["operating_points"]:
        again = binary_metrics(y, s, p["threshold"])
        assert (p["tp"], p["fp"]) == (again.tp, again.fp)


def test_stored_threshold_is_used(trained_run, tmp_path):
    from covidct.cli import main
    from covidct.evaluation.thresholds import store_threshold

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    record = store_threshold(run, "0.3")
    assert record["threshold"] == 0.3 and record["rule"] == "given"
    r = evaluate_run(run, "test", out_dir=tmp_path / "e", n_bootstrap=0)
    assert r["threshold"] == 0.3 and r["operating_points"][0]["threshold"] == 0.3
    assert json.loads((run / "threshold.json").read_text())["threshold"] == 0.3
    assert main(["threshold", str(run), "--choose", "1.5"]) == 2
    val = list(csv.DictReader((tmp_path / "e" / "val_predictions.csv").open()))
    vy, vs = [int(v["label"]) for v in val], [float(v["score"]) for v in val]
    assert len(set(vy)) == 2  # the fixture's val split holds both classes
    assert main(["threshold", str(run), "--choose", "youden"]) == 0
    assert json.loads((run / "threshold.json").read_text())["threshold"] == pytest.approx(
        youden_threshold(vy, vs), abs=1e-5
    )


def test_youden_threshold_stored_matches_validation(trained_run, tmp_path):
    from covidct.evaluation.metrics import youden_threshold
    from covidct.evaluation.thresholds import store_threshold

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    r = evaluate_run(run, "test", out_dir=tmp_path / "e", n_bootstrap=0)
    val = list(csv.DictReader((tmp_path / "e" / "val_predictions.csv").open()))
    y, s = [int(v["label"]) for v in val], [float(v["score"]) for v in val]
    if len(set(y)) < 2:
        pytest.skip("tiny val split with one class")
    record = store_threshold(run, "youden")
    assert record["threshold"] == pytest.approx(youden_threshold(y, s), abs=1e-5)
    assert record["chosen_on"] == "val" and r["split"] == "test"


def test_ensemble_mean_is_the_mean_of_member_probabilities():
    a, b = np.array([0.2, 0.9, 0.5]), np.array([0.4, 0.7, 0.0])
    np.testing.assert_allclose(ensemble_mean([a, b]), [0.3, 0.8, 0.25])
    with pytest.raises(ValueError, match="different numbers"):
        ensemble_mean([a, b[:2]])


def test_tta_averages_the_image_and_its_mirror(trained_run):
    module = load_classifier(find_checkpoint(trained_run))
    ds = eval_dataset(module, RunDir(trained_run).data().splits["val"])
    _, _, plain = predict_scores(module, ds)
    _, _, tta = predict_scores(module, ds, tta=True)
    with torch.no_grad():
        x = torch.stack([ds[i]["image"] for i in range(len(ds))])
        mirrored = module.score_batch(x.flip(-1), False)[0].numpy()
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-5)
    assert not np.allclose(tta, plain)


def test_ensemble_evaluation_averages_members(trained_run, tmp_path):
    other = perturbed_copy(trained_run, tmp_path / "other")
    single = evaluate_run(trained_run, "test", out_dir=tmp_path / "one", n_bootstrap=0)
    evaluate_run(other, "test", out_dir=tmp_path / "other-eval", n_bootstrap=0)
    with pytest.raises(ModelError, match="--out"):
        evaluate_run([trained_run, other], "test", n_bootstrap=0)
    both = evaluate_run([trained_run, other], "test", out_dir=tmp_path / "two", n_bootstrap=0)
    assert both["ensemble"] == {"members": 2, "aggregation": "mean of probabilities"}
    assert both["epoch"] == [single["epoch"]] * 2
    one = read_predictions(tmp_path / "one" / "predictions.csv")
    two = read_predictions(tmp_path / "other-eval" / "predictions.csv")
    mean = read_predictions(tmp_path / "two" / "predictions.csv")
    assert one.keys() == two.keys() == mean.keys()
    assert any(abs(one[k][1] - two[k][1]) > 0.01 for k in one)  # the members disagree, so the check can fail
    for path, (label, score) in one.items():
        assert mean[path][0] == label and mean[path][1] == pytest.approx((score + two[path][1]) / 2, abs=1e-5)
    assert "ensemble of" in metrics_table(both)


def test_a_site_chooses_its_own_threshold_on_its_labelled_set(trained_run, tmp_path, capsys):
    """`covidct threshold RUN --choose youden --on SET`: the operating point from a site's own labelled images (its
    scanners shift the scores), recorded as such; a number with --on, or a one-class set, refused without touching
    what was stored."""
    from covidct.cli import main
    from tests.conftest import make_sars_layout

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    site = make_sars_layout(tmp_path / "site", 7, 6, seed=3)
    # The scores at full precision, as the program computes them: predictions.csv rounds to six decimals, and the
    # chosen threshold sits on a score, so counts recounted from rounded scores can differ by one (machine-dependent).
    from covidct.evaluation.scoring import eval_dataset, external_samples, load_classifier, predict_scores

    module = load_classifier(RunDir(run).checkpoint("best"))
    _, samples, _ = external_samples(RunDir(run), f"site={site}")
    _, y, s = predict_scores(module, eval_dataset(module, samples))
    before = evaluate_run(run, "val", out_dir=tmp_path / "v", n_bootstrap=0)["threshold"]
    capsys.readouterr()
    assert main(["threshold", str(run), "--choose", "youden", "--on", f"site={site}"]) == 0
    assert "chosen on site by youden" in capsys.readouterr().out
    record = json.loads((run / "threshold.json").read_text())
    assert record["chosen_on"] == "site" and record["set"] == f"site={site}" and "val_metrics" not in record
    assert record["previous_threshold"] == pytest.approx(before)  # what the run had, to go back to
    assert record["threshold"] == pytest.approx(youden_threshold(y, s), abs=1e-5)
    at = binary_metrics(y, s, record["threshold"])
    assert (record["set_metrics"]["tp"], record["set_metrics"]["fp"]) == (at.tp, at.fp)
    assert evaluate_run(run, "test", out_dir=tmp_path / "e", n_bootstrap=0)["threshold"] == record["threshold"]
    from covidct.inference.load import load_trained

    assert load_trained(run).card.threshold_chosen_on == "site"
    op = load_trained(run).card.operating_point  # by what rule, on what, when: in the card every loader reads
    assert (op["rule"], op["chosen_on"], op["set"]) == ("youden", "site", f"site={site}") and op["chosen_at"].endswith(
        "Z"
    )  # where the line was drawn (not the local path)

    stored = (run / "threshold.json").read_bytes()
    assert main(["threshold", str(run), "--choose", "0.3", "--on", f"site={site}"]) == 2
    one = tmp_path / "covid-only"
    shutil.copytree(site / "COVID", one / "COVID")
    assert main(["threshold", str(run), "--choose", "youden", "--on", f"one={one}"]) == 2
    err = capsys.readouterr().err
    assert "one class only" in err and "covidct: error:" in err
    assert (run / "threshold.json").read_bytes() == stored  # refused: nothing rewritten
    assert evaluate_run(run, "test", out_dir=tmp_path / "e2", n_bootstrap=0)["threshold"] == record["threshold"]
