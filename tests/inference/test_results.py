import csv

from covidct.inference.results import Predictions, Result


def _row(**kw):
    row = {"path": "scan/", "series": "1.2", "slice": 3, "score": 0.75, "label": "COVID", "threshold": 0.5}
    row |= {"lung_fraction": "", "counted": 1, "ood_score": 0.1, "in_distribution": True, "ood_reason": ""}
    return row | kw


def test_a_row_reads_as_a_typed_result_an_unreadable_slice_too():
    ok = Result.of_row(_row())
    assert (ok.score, ok.in_distribution, ok.ood_reason, ok.slice) == (0.75, True, None, "3")
    unreadable = Result.of_row(_row(score="", label="unreadable: truncated", in_distribution=None))
    assert unreadable.score is None and unreadable.in_distribution is None and unreadable.label.startswith("unread")
    flagged = Result.of_row(_row(in_distribution=False, ood_reason="kernel B70f not seen"))
    assert flagged.in_distribution is False and flagged.ood_reason == "kernel B70f not seen"


def test_predictions_write_the_csv_predict_writes(tmp_path):
    rows = [_row(), _row(in_distribution=False), _row(in_distribution=None, ood_score="")]
    out = Predictions(rows, {"shift": {"tested": False}}).to_csv(tmp_path / "p.csv")
    cells = [r["in_distribution"] for r in csv.DictReader(out.open())]
    assert cells == ["1", "0", ""]
    assert [r.in_distribution for r in Predictions(rows, {}).results] == [True, False, None]
