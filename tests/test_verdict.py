"""The one verdict (covidct.verdict): the rules every output renders, tested on hand-made numbers."""

import numpy as np
import pytest

from covidct.errors import DataError
from covidct.verdict import (
    IMAGE_UNLIKE,
    OOD_STUDY_SHARE,
    flags_with_acquisition,
    judge_image,
    label_of,
    study_ood,
    study_series,
    summarise_volume,
    volume_ood,
)

NAMES = ("NonCOVID", "COVID")


def test_the_label_is_positive_at_the_threshold_itself():
    assert label_of(0.3, 0.3, NAMES) == "COVID"
    assert label_of(np.nextafter(0.3, 0), 0.3, NAMES) == "NonCOVID"


def test_an_image_is_flagged_by_its_pixels_or_its_acquisition_and_the_acquisition_is_the_reason_given():
    plain = judge_image(0.9, 0.5, NAMES, None, "a scanner not seen")
    assert (plain.label, plain.in_distribution, plain.ood_reason, plain.ood_score) == ("COVID", None, None, None)
    assert judge_image(0.1, 0.5, NAMES, (0.2, False), None).in_distribution is True
    assert judge_image(0.1, 0.5, NAMES, (0.2, False), None).ood_reason == ""
    assert judge_image(0.1, 0.5, NAMES, (0.9, True), None).ood_reason == IMAGE_UNLIKE
    unseen = judge_image(0.1, 0.5, NAMES, (0.2, False), "kernel B70f not seen")
    assert (unseen.in_distribution, unseen.ood_reason) == (False, "kernel B70f not seen")
    assert flags_with_acquisition(np.array([False, True, False]), [None, None, "x"]).tolist() == [False, True, True]


def _slices(flags: list[bool], reason: str = IMAGE_UNLIKE) -> list[dict]:
    return [{"in_distribution": not f, "ood_reason": reason if f else ""} for f in flags]


def test_a_volume_is_flagged_from_a_quarter_of_its_counted_slices_with_their_commonest_reason():
    n = 20
    below = round(OOD_STUDY_SHARE * n) - 1
    assert volume_ood(_slices([True] * below + [False] * (n - below)))["in_distribution"] is True
    at = volume_ood(_slices([True] * (below + 1) + [False] * (n - below - 1)))
    assert at["in_distribution"] is False and at["ood_reason"] == IMAGE_UNLIKE and at["ood_fraction"] == 0.25
    assert volume_ood([{"score": 0.5}]) == {}  # no detector: no verdict, not "in distribution"


def test_only_slices_in_lung_count_and_a_study_takes_its_lung_reconstruction():
    slices = [(0.99, 0.0), (0.2, 0.3), (0.4, 0.3)]  # (score, lung fraction): the first shows no lung
    entries = [{"index": k, "score": s, "lung_fraction": f, "problem": ""} for k, (s, f) in enumerate(slices)]
    summary = summarise_volume(entries, "max")
    assert summary["score"] == 0.4 and summary["slices_counted"] == 2 and not entries[0]["counted"]
    with pytest.raises(DataError, match="aggregation must be one of"):
        summarise_volume(entries, "top3")
    soft = {"slices_in_lung": 90, "slices": 100, "in_distribution": True}
    lung = {"slices_in_lung": 40, "slices": 50, "in_distribution": False, "ood_fraction": 0.5, "ood_reason": "r"}
    chosen = study_series([("soft", soft), ("lung", lung)], lambda s: s == "lung")
    assert chosen[0] == "lung" and study_ood(chosen[1])["in_distribution"] is False
    assert study_series([("soft", soft), ("lung", lung)], lambda s: False)[0] == "soft"


def test_a_flag_renders_once_per_format_and_reads_back():
    from covidct.verdict import flag_cell, flag_of_cell, ood_mark

    for flag in (True, False, None):
        assert flag_of_cell(flag_cell(flag)) is flag
    assert [flag_cell(f) for f in (True, False, None)] == ["1", "0", ""]
    assert flag_of_cell(" 0 ") is False and flag_of_cell(None) is None
    assert ood_mark(False) and not ood_mark(None) and not ood_mark(True)
    with pytest.raises(DataError, match="in_distribution must be 1, 0 or empty, got 'False'"):
        flag_of_cell("False")
