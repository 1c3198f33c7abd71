"""A cross-validation folder's summary, read back checked: what `cross_validate` and `covidct cv --student` read."""

import json

import pytest

from covidct.errors import ModelError
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
