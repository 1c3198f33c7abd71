"""Fuzzing the readers (Hypothesis): mutated PNG, JPEG, DICOM and ZIP bytes give a picture, or a clear error that
names the upload (InputError for serve, DataError for the file readers), never another exception and never a hang.
Bounded: a fixed number of examples, derandomised so that CI runs the same ones, within pytest-timeout's limit."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from covidct.config import INPUT_LIMITS
from covidct.data.dicom_study import scan_folder
from covidct.data.medical import dicom_grey, open_dicom
from covidct.errors import DataError
from covidct.inference.uploads import InputError, decode_upload, unpack_series_zip
from tests.conftest import synthetic_ct
from tests.medical_files import write_dicom

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_ct(np.random.default_rng(3), True, (64, 48))).save(buf, format=fmt)
    return buf.getvalue()


def _dicom_bytes(tmp: Path, name: str = "s.dcm", z: float = 0.0) -> bytes:
    hu = synthetic_ct(np.random.default_rng(4), True, (64, 64)).astype(np.float32) * 6 - 1350
    return write_dicom(tmp / name, hu, z=z, instance=int(z) + 1).read_bytes()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("seeds")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(2):
            zf.writestr(f"series/IM{k}", _dicom_bytes(tmp, f"{k}.dcm", float(k)))
    return {"png": _image_bytes("PNG"), "jpeg": _image_bytes("JPEG"), "dicom": _dicom_bytes(tmp), "zip": buf.getvalue()}


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with a few of these: bytes overwritten, a span cut out, random bytes inserted, the tail cut off."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del out[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del out[at:]
    return bytes(out)


def _decode_or_refuse(data: bytes, name: str) -> None:
    try:
        image = decode_upload(data, name)
    except InputError as e:
        assert 400 <= e.status < 500 and name in e.detail
    else:
        assert image.mode == "RGB" and min(image.size) >= INPUT_LIMITS.min_side


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_mutated_uploads_decode_or_are_refused_clearly(seeds, kind):
    @FUZZ
    @given(mutations(seeds[kind]))
    def check(data: bytes) -> None:
        _decode_or_refuse(data, f"upload.{kind}")

    check()


@pytest.mark.timeout(120)
@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused_clearly(data):
    _decode_or_refuse(data, "random.bin")


@pytest.mark.timeout(300)
def test_mutated_dicom_files_read_or_raise_a_data_error_naming_the_file(seeds, tmp_path):
    @FUZZ
    @given(mutations(seeds["dicom"]))
    def check(data: bytes) -> None:
        path = tmp_path / "slice.dcm"
        path.write_bytes(data)
        try:
            dicom_grey(open_dicom(path), str(path), (-600.0, 1500.0))
        except DataError as e:
            assert "slice.dcm" in str(e)

    check()


@pytest.mark.timeout(300)
def test_mutated_zips_unpack_and_scan_or_are_refused_clearly(seeds, tmp_path):
    @FUZZ
    @given(mutations(seeds["zip"]))
    def check(data: bytes) -> None:
        target = tmp_path / "unpacked"
        target.mkdir(exist_ok=True)
        for old in target.iterdir():
            old.unlink()
        try:
            folder = unpack_series_zip(data, "series.zip", target, INPUT_LIMITS)
        except InputError as e:
            assert 400 <= e.status < 500 and "series.zip" in e.detail
            return
        try:
            scan_folder(folder)
        except DataError as e:
            assert str(folder) in str(e)

    check()


def _nifti_bytes(tmp: Path, compressed: bool) -> bytes:
    from tests.medical_files import chest_hu, write_nifti

    volume = np.stack([chest_hu(48, seed=k) for k in range(3)], axis=-1)
    return write_nifti(tmp / ("v.nii.gz" if compressed else "v.nii"), volume).read_bytes()


@pytest.mark.parametrize("compressed", [True, False])
def test_mutated_nifti_volumes_read_or_raise_a_data_error_naming_the_file(tmp_path_factory, compressed):
    """A mutated NIfTI header or body (its dimensions, data type, offset or bytes) is read within the input limits or
    refused by name before its first slice, never another exception: what predict skips as a bad input."""
    from covidct.data.inputs import volume_slices

    tmp = tmp_path_factory.mktemp("nifti")
    seed = _nifti_bytes(tmp, compressed)
    name = "m.nii.gz" if compressed else "m.nii"

    @FUZZ
    @given(mutations(seed))
    def check(data: bytes) -> None:
        path = tmp / name
        path.write_bytes(data)
        try:
            for hu, grey in volume_slices(path):
                assert hu.ndim == 2 and grey.shape == hu.shape and np.isfinite(hu).all()
        except DataError as e:
            assert name in str(e)

    check()
