"""The one reader of inputs to score (covidct.data.inputs): what a file is, then its read; on small files made
here."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from covidct.data.inputs import (
    DICOM,
    DICOM_FOLDER,
    IMAGE,
    NIFTI,
    ZIP,
    kind_of,
    kind_of_bytes,
    list_inputs,
    read_bytes,
    read_slice,
)
from covidct.errors import DataError
from tests.medical_files import write_dicom


def _png(path, size=(64, 48)) -> None:
    Image.fromarray(np.full(size[::-1], 90, np.uint8)).save(path)


def test_what_an_input_is_comes_from_its_content_where_the_name_cannot_tell(tmp_path):
    _png(tmp_path / "a.png")
    write_dicom(tmp_path / "s.dcm", np.zeros((8, 8), np.float32))
    (tmp_path / "noext").write_bytes((tmp_path / "s.dcm").read_bytes())  # a PACS export without a suffix
    (tmp_path / "v.nii.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    kinds = {p.name: kind_of(p) for p in tmp_path.iterdir()}
    assert kinds == {"a.png": IMAGE, "s.dcm": DICOM, "noext": DICOM, "v.nii.gz": NIFTI, "notes.txt": ""}
    assert kind_of(tmp_path) == DICOM_FOLDER
    data = (tmp_path / "s.dcm").read_bytes()
    assert [kind_of_bytes(b) for b in ((tmp_path / "a.png").read_bytes(), data, b"PK\x03\x04", b"GIF89a")] == [
        IMAGE,
        DICOM,
        ZIP,
        "",
    ]


def test_a_folder_with_dicom_is_one_input_and_images_beside_it_are_listed_one_by_one(tmp_path):
    study, plain = tmp_path / "study", tmp_path / "plain"
    study.mkdir(), plain.mkdir()
    write_dicom(study / "noext", np.zeros((8, 8), np.float32))
    _png(study / "key.png")
    _png(plain / "b.png")
    _png(plain / "a.png")
    (plain / "notes.txt").write_text("x")  # listed, to be skipped by name when read (not passed over in silence)
    (plain / ".DS_Store").write_text("x")  # hidden: not an input
    listed = list_inputs([str(study), str(plain)])
    assert listed == [study, study / "key.png", plain / "a.png", plain / "b.png", plain / "notes.txt"]
    assert list_inputs([str(plain / "*.png")]) == [plain / "a.png", plain / "b.png"]
    with pytest.raises(DataError, match="does not exist"):
        list_inputs([str(tmp_path / "missing.png")])


def test_listing_what_was_listed_gives_the_same_list_and_each_file_once(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    write_dicom(study / "noext", np.zeros((8, 8), np.float32))
    _png(study / "key.png")
    _png(tmp_path / "scan[1].png")
    _png(tmp_path / "scan1.png")  # what the glob scan[1].png would match
    listed = list_inputs([str(study), str(study / "key.png")])  # the key image twice: beside the DICOM, and named
    assert listed == [study, study / "key.png"]
    assert list_inputs(listed) == listed
    assert list_inputs([tmp_path / "scan[1].png"]) == [tmp_path / "scan[1].png"]  # a Path is the file, not a glob
    assert list_inputs([str(tmp_path / "scan[1].png")]) == [tmp_path / "scan1.png"]  # a string is a glob


def test_a_slice_file_and_the_same_bytes_uploaded_read_the_same(tmp_path):
    _png(tmp_path / "a.png")
    write_dicom(tmp_path / "s.dcm", np.full((40, 40), -600, np.float32))
    for path in (tmp_path / "a.png", tmp_path / "s.dcm"):
        from_file, from_bytes = read_slice(path), read_bytes(path.read_bytes(), path.name)
        assert from_file.mode == "RGB" and np.array_equal(np.asarray(from_file), np.asarray(from_bytes))
    assert np.asarray(read_slice(tmp_path / "s.dcm"))[0, 0, 0] == 128  # -600 HU: the lung window's centre
    tiny = io.BytesIO()
    Image.new("L", (4, 4)).save(tiny, format="PNG")
    with pytest.raises(DataError, match=r"up\.png"):
        read_bytes(tiny.getvalue(), "up.png")  # under the fewest pixels a model can score


def test_a_file_in_a_folder_that_no_reader_takes_is_listed_and_refused_by_name(tmp_path):
    """A .gif beside the slices was passed over in silence: it is now an input that is skipped with what covidct
    reads, so the user sees it was not scored."""
    _png(tmp_path / "a.png")
    Image.new("L", (64, 64)).save(tmp_path / "b.gif")
    listed = list_inputs([str(tmp_path)])
    assert listed == [tmp_path / "a.png", tmp_path / "b.gif"]
    with pytest.raises(
        DataError, match=r"b\.gif is not a file covidct reads: it reads NIfTI \(\.nii.*DICOM.*images \(.*\.png"
    ):
        read_slice(tmp_path / "b.gif")
