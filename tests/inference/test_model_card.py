"""The typed model card (covidct.runs.model_card): one record, validated on read and on write, naming the file and the
field it refuses."""

from __future__ import annotations

import json
import math
import re

import pytest

from covidct.data.preprocessing import Preprocessing
from covidct.errors import ModelError
from covidct.runs.model_card import ModelCard

PRE = Preprocessing.for_input(32)


def card(**changes) -> ModelCard:
    fields = {"architecture": "timm:resnet10t", "preprocessing": PRE, "class_names": ["NonCOVID", "COVID"]}
    return ModelCard(**{**fields, "threshold": 0.3, **changes})


def test_a_card_written_reads_back_the_same(tmp_path):
    written = card(threshold_chosen_on="val", ood={"method": "mahalanobis"}, source_run="run-1")
    written.write(tmp_path)
    data = json.loads((tmp_path / "model.json").read_text())
    assert data["positive_class"] == "COVID" and data["input"]["shape"] == ["batch", 3, 32, 32]
    assert "adaptation" not in data  # a record the model does not have is left out, not written as null
    assert ModelCard.read(tmp_path / "model.json") == written


def _tampered(tmp_path, **changes) -> str:
    card().write(tmp_path)
    data = json.loads((tmp_path / "model.json").read_text())
    for key, value in changes.items():
        if value is KeyError:
            data.pop(key)
        else:
            data[key] = value
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError) as e:
        ModelCard.read(tmp_path / "model.json")
    assert "model.json" in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("bad", [-1, 5, math.nan, "abc", None])
def test_a_card_with_a_bad_threshold_is_refused_naming_the_field(tmp_path, bad):
    assert "'threshold'" in _tampered(tmp_path, threshold=bad)


def test_a_card_with_a_missing_or_unknown_field_or_bad_classes_is_refused(tmp_path):
    assert "no 'threshold'" in _tampered(tmp_path, threshold=KeyError)
    assert "unknown field(s) ['treshold']" in _tampered(tmp_path, treshold=0.3)
    assert "'class_names' must be two names" in _tampered(tmp_path, class_names=["COVID"])
    assert "is not class_names[1]" in _tampered(tmp_path, positive_class="NonCOVID")
    assert "'format' must be covidct-model/1" in _tampered(tmp_path, format="covidct-model/0")
    assert "'preprocessing' cannot be read" in _tampered(tmp_path, preprocessing={"size": 3})


def test_a_card_without_an_operating_point_is_never_written(tmp_path):
    with pytest.raises(ModelError, match="'threshold'"):
        card(threshold=None).write(tmp_path)
    assert not (tmp_path / "model.json").exists()


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("input_size", 50000, "'input_size' must be a whole number of pixels from 32 to 1024"),  # memory, refused
        ("input_size", 32.5, "'input_size' must be a whole number"),
        ("resize", -5, "'resize' must be a whole number of pixels from 32 to 64"),
        ("mean", [0.5, 0.5], "'mean' must be three finite numbers"),
        ("mean", [math.nan] * 3, "'mean' must be three finite numbers"),
        ("std", [0, 0, 0], "'std' must be three positive numbers"),
        ("grayscale", "yes", "'grayscale' must be one of \\[False, True\\]"),
        ("crop", "chest", "'crop' must be one of"),
        ("intensity", 1, "'intensity' must be one of"),
    ],
)
def test_a_card_whose_preprocessing_would_take_the_memory_or_give_nan_scores_is_refused(tmp_path, field, value, says):
    """A model card is input too: each preprocessing field is checked on read, not met as an out-of-memory kill
    (input_size 50,000), a bare traceback (two means) or NaN scores (a std of 0)."""
    pre = {**PRE.to_dict(), field: value}
    message = _tampered(tmp_path, preprocessing=pre)
    assert "'preprocessing' cannot be read" in message
    assert re.search(says, message), message


def test_preprocessing_read_back_is_the_same_and_older_records_without_the_newer_steps_read():
    assert Preprocessing.from_dict(PRE.to_dict()) == PRE
    older = {k: v for k, v in PRE.to_dict().items() if k not in ("grayscale", "crop", "intensity")}
    assert Preprocessing.from_dict(older) == PRE
