"""The input readers are a registry (MONAI's ImageReader is the model): each kind of input is one Reader, asked in
order; a new format is one reader and one registration, and listing, reading and the scorer's dispatch take it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidct.data import inputs
from covidct.data.inputs import (
    DICOM,
    DICOM_FOLDER,
    IMAGE,
    NIFTI,
    SLICE,
    Reader,
    kind_of,
    kind_of_bytes,
    list_inputs,
    read_bytes,
    read_slice,
    reader_for,
    readers,
    register_reader,
)
from covidct.errors import DataError
from tests.conftest import synthetic_ct


@pytest.fixture
def npy_reader():
    """A format covidct does not know: a 2-D NumPy array saved with np.save, read as a grey picture."""

    def read(path, window):
        return Image.fromarray(np.load(path).astype(np.uint8)).convert("RGB")

    reader = register_reader(Reader("npy", SLICE, lambda p: p.suffix == ".npy" and p.is_file(), read))
    yield reader
    inputs._READERS.remove(reader)


def test_the_built_in_readers_are_asked_in_order():
    assert [r.kind for r in readers()] == [DICOM_FOLDER, NIFTI, DICOM, IMAGE]


def test_a_new_format_is_one_reader_and_one_registration(npy_reader, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    np.save(folder / "a.npy", synthetic_ct(np.random.default_rng(0), True, (64, 48)))
    Image.fromarray(synthetic_ct(np.random.default_rng(1), False, (64, 48))).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an input")
    assert kind_of(folder / "a.npy") == "npy" and reader_for(folder / "a.npy") is npy_reader
    assert list_inputs([str(folder)]) == [folder / "a.npy", folder / "b.png", folder / "notes.txt"]
    assert read_slice(folder / "a.npy").size == (64, 48)
    with pytest.raises(DataError, match=r"notes\.txt is not a file covidct reads: .*DICOM.* and npy files"):
        read_slice(folder / "notes.txt")  # the kinds named are the registered readers', the new one's too
    with pytest.raises(ValueError, match="registered already"):
        register_reader(npy_reader)


def test_uploads_are_known_by_their_bytes_and_a_non_slice_is_not_read_as_one(tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(synthetic_ct(np.random.default_rng(2), True, (40, 40))).save(png)
    data = png.read_bytes()
    assert kind_of_bytes(data) == IMAGE and kind_of_bytes(b"PK\x03\x04rest") == "zip"
    assert kind_of_bytes(b"\0" * 128 + b"DICM") == DICOM and kind_of_bytes(b"GIF89a") == ""
    assert read_bytes(data, "upload.png").size == (40, 40)
    with pytest.raises(DataError, match="not a PNG, JPEG or DICOM"):
        read_bytes(b"GIF89a" + bytes(100), "upload.gif")
    (tmp_path / "v.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="not an image or a DICOM slice"):
        read_slice(tmp_path / "v.nii.gz")
