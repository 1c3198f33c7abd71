"""A cross-validation folder's summary, read back checked: what `cross_validate` and `covidct cv --student` read."""

import json

import pytest

from covidct.errors import DataError, ModelError
from covidct.runs.records import CV_SUMMARY, CrossValidation


def test_a_cv_folder_reads_back_and_a_damaged_summary_is_refused_by_name(tmp_path):
    summary = {"folds": [{"fold": 1, "run": str(tmp_path / "fold-1" / "run")}], "out_of_fold": {"n": 3}}
    (tmp_path / CV_SUMMARY).write_text(json.dumps(summary))
    cv = CrossValidation.at(tmp_path)
    assert cv.runs == [tmp_path / "fold-1" / "run"] and cv.student is None
    (tmp_path / "student").mkdir()
    assert CrossValidation.at(tmp_path).student == tmp_path / "student"
    for damaged in ('{"folds": [{"fold": 1}]}', '{"folds": 3}', "[1, 2]", "{not json"):
        (tmp_path / CV_SUMMARY).write_text(damaged)
        with pytest.raises(ModelError, match=r"cv\.json .*run covidct cv again"):
            CrossValidation.at(tmp_path)


def test_an_evaluations_figures_out_of_zero_to_one_or_nan_are_refused_by_name(tmp_path):
    from covidct.fileio.cards import read_json_card
    from covidct.runs.records import EvaluationRecord

    good = {"model": "m", "split": "test", "n": 3, "accuracy": 0.5, "sensitivity": None, "specificity": 1.0}
    good |= {"auc": 0.75, "threshold": 0.4, "class_names": ["NonCOVID", "COVID"]}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(good))
    assert read_json_card(EvaluationRecord, path, "evaluate again").auc == 0.75
    for field, value in (("accuracy", 1.5), ("auc", float("nan")), ("threshold", -0.1)):
        path.write_text(json.dumps({**good, field: value}))
        with pytest.raises(ModelError, match=rf"metrics\.json: field '{field}' input should be"):
            read_json_card(EvaluationRecord, path, "evaluate again")


def test_a_damaged_row_of_a_runs_metrics_csv_is_refused_naming_its_line(tmp_path):
    from covidct.runs import RunDir

    run = RunDir(tmp_path)
    header = "epoch,train_loss,val_auc\n"
    run.metrics_path.write_text(header + "1,0.61,0.78\n2,0.55,\n")
    assert [r["epoch"] for r in run.history()] == ["1", "2"]  # an empty cell (no validation that epoch) reads
    run.metrics_path.write_text(header + "1,0.61,0.78\n2,0.55,\ngarbage,row,\n")
    with pytest.raises(ModelError, match=r"metrics\.csv line 4: column\(s\) \['epoch', 'train_loss'\] not a number"):
        run.history()
    run.metrics_path.write_text(header + "1,0.61,0.78\n3,0.5,0.8,9\n")  # a cell past the header: csv's None key
    with pytest.raises(DataError, match=r"metrics\.csv line 3 has more cells than its header"):
        run.history()


def test_an_evaluations_predictions_are_read_back_checked_naming_a_damaged_line(tmp_path):
    from covidct.runs.records import prediction_rows

    path = tmp_path / "predictions.csv"
    header = "path,source,label,score,prediction\n"
    path.write_text(header + "a.png,s,1,0.9,1\nb.png,s,0,0.7,1\n")
    rows = prediction_rows(path)
    assert [(r["label"], r["score"], r["prediction"]) for r in rows] == [(1, 0.9, 1), (0, 0.7, 1)]
    for damaged in ("c.png,s,7,0.2,0\n", "c.png,s,1,high,1\n", "c.png,s,1,1.5,1\n", ",s,1,0.5,1\n"):
        path.write_text(header + "a.png,s,1,0.9,1\n" + damaged)  # a third class, a word, a score past 1, no path
        with pytest.raises(ModelError, match=r"predictions\.csv line 3: a prediction needs"):
            prediction_rows(path)
