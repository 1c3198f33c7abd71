"""Every settings file (a recipe given to train, a run folder's config.yaml, a notebook's dict) is checked against
the fields' declared types on read: a value of the wrong kind is refused with the field, the value and the kind it
must be (and the file), never met later as a bare TypeError; plain YAML and numpy numbers read as the types meant."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from covidct.config import EvalConfig, TrainConfig
from covidct.config.base import checked_types, field_kind
from covidct.config.limits import InputLimits
from covidct.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: six\n", r"epochs must be of type int, got 'six' \(str\)"),
        ("teacher_epochs: six\n", r"teacher_epochs must be of type int \| None, got 'six'"),
        ("lr: fast\n", r"lr must be of type float, got 'fast'"),
        ("fold_probe: maybe\n", r"fold_probe must be of type bool, got 'maybe'"),
        ("epochs: true\n", r"epochs must be of type int, got True \(bool\)"),
        ("teachers: runs/x\n", r"teachers must be of type list\[str\], got 'runs/x'"),
        ("sources: [covid-ct, [a, b]]\n", r"sources must be of type list\[str\]"),
        ("extra: 3\n", r"extra must be of type dict"),
    ],
)
def test_a_recipe_with_a_value_of_the_wrong_kind_is_refused_naming_the_file_and_field(tmp_path, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        TrainConfig.from_yaml(recipe)
    assert str(recipe) in str(caught.value)


def test_plain_yaml_and_numpy_numbers_read_as_the_types_meant(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 1e-3\nprecision: 32\nepochs: 4\nweight_decay: 0\nsources:\nextra:\n")  # 1e-3: a string
    config = TrainConfig.from_yaml(recipe)
    assert (config.sources, config.extra) == ([], {})  # a list or mapping left empty: none
    assert (config.lr, config.precision, config.epochs, config.weight_decay) == (0.001, "32", 4, 0.0)
    assert (type(config.lr), type(config.weight_decay)) == (float, float)
    from_numpy = TrainConfig.from_dict({"epochs": np.int64(3), "lr": np.float32(0.5), "seed": np.int32(7)})
    assert [type(v) for v in (from_numpy.epochs, from_numpy.lr, from_numpy.seed)] == [int, float, int]
    again = tmp_path / "again.yaml"
    again.write_text(from_numpy.to_yaml())  # what a run folder's config.yaml holds reads back the same
    assert TrainConfig.from_yaml(again) == from_numpy


def test_the_other_settings_are_checked_the_same_way():
    with pytest.raises(ConfigError, match=r"threshold must be of type float \| None"):
        EvalConfig.from_dict({"threshold": "high"})
    assert EvalConfig.from_dict({"threshold": "0.25"}).threshold == 0.25
    name = next(iter(InputLimits().to_dict()))
    with pytest.raises(ConfigError, match=f"{name} must be of type"):
        InputLimits.from_dict({name: "lots"})


@pytest.mark.parametrize(
    ("hint", "kind"),
    [
        (bool, bool),
        (int | None, int),
        (list[str], list),
        (tuple[int, ...], list),
        (dict[str, typing.Any], dict),
        (str | None, str),
        (typing.Literal["a", "b"], str),
    ],
)
def test_a_flag_parses_the_kind_its_field_declares(hint, kind):
    assert field_kind(hint) is kind


def test_every_flag_of_every_settings_class_reads_back_through_the_type_check():
    """What a flag parses (one text given on the command line, as its kind) passes the settings' check on read."""
    import dataclasses

    samples = {bool: True, list: ["x"], dict: {}, int: "3", float: "0.5", str: "x"}
    for cls in (TrainConfig, EvalConfig, InputLimits):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = field_kind(hints[f.name])
            value = samples[kind] if kind in (bool, list, dict, str) else kind(samples[kind])
            assert checked_types(cls, {f.name: value})[f.name] == value, f.name
