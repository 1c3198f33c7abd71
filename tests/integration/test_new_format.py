"""A format covidct does not know, added as one reader and one registration (tests/data/test_readers.py's npy
reader), is listed, read and scored by predict beside the built-in ones, as the command line and the API run it."""

from __future__ import annotations

import numpy as np
from PIL import Image

import covidct.api as cct
from tests.conftest import synthetic_ct
from tests.data.test_readers import npy_reader  # noqa: F401  (the fixture: registered for the test, then removed)


def test_a_registered_toy_format_is_scored_through_predict(npy_reader, exported_model, tmp_path):  # noqa: F811
    folder = tmp_path / "scans"
    folder.mkdir()
    grey = synthetic_ct(np.random.default_rng(4), True, (64, 48))
    np.save(folder / "a.npy", grey)
    Image.fromarray(grey).save(folder / "same.png")
    model = cct.load(exported_model)
    rows = {r.path.rsplit("/", 1)[-1]: r for r in model.predict(folder).results}
    assert set(rows) == {"a.npy", "same.png"}
    assert rows["a.npy"].score is not None and rows["a.npy"].label in model.class_names
    assert abs(rows["a.npy"].score - rows["same.png"].score) < 1e-6  # the same pixels, the same score
