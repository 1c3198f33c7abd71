"""DICOM as hospitals send it: compressed transfer syntaxes (files made by others), folders of studies and
series, lung slices only."""

from pathlib import Path

import numpy as np
import pydicom
import pytest

from covidct.data.dicom_study import scan_folder, slice_hu
from covidct.data.lungmask import has_lung, lung_fraction, lung_mask
from covidct.errors import DataError
from tests.medical_files import chest_hu, write_dicom

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.mark.parametrize(
    "compressed, reference",
    [
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE lossless
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ],
)
def test_compressed_files_made_by_others_decode_to_the_same_pixels(compressed, reference):
    got, _ = slice_hu(PYDICOM_FILES / compressed)
    want, _ = slice_hu(PYDICOM_FILES / reference)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "693_J2KI.dcm", "JPGExtended.dcm", "CT_small.dcm"])
def test_lossy_and_other_single_frame_files_give_plausible_images(name):
    hu, ds = slice_hu(PYDICOM_FILES / name)
    assert hu.shape == (ds.Rows, ds.Columns) and hu.std() > 1 and np.isfinite(hu).all()


def test_jpeg_lossless_process_14_as_hospitals_export_it(tmp_path):
    """GDCM writes CT_small as JPEG Lossless SV1 (the transfer syntax of the clinical series in issue 14)."""
    import gdcm  # noqa: F401  (installed with covidct)

    hu = chest_hu(64)
    plain = write_dicom(tmp_path / "plain.dcm", hu)
    packed = write_dicom(tmp_path / "packed.dcm", hu, compress="jpeg-lossless")
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(slice_hu(packed)[0], slice_hu(plain)[0])


@pytest.mark.parametrize(
    "name, message",
    [
        ("SC_rgb_jpeg.dcm", "expected one 2-D slice"),  # colour
        ("SC_rgb_rle_2frame.dcm", "expected one 2-D slice"),  # multi-frame colour
        ("rtplan.dcm", "no pixel data"),  # not an image
        ("MR_truncated.dcm", "cannot be decoded"),  # pixel data shorter than declared
    ],
)
def test_colour_multiframe_non_image_and_truncated_get_clear_messages(name, message):
    with pytest.raises(DataError, match=message) as e:
        slice_hu(PYDICOM_FILES / name)
    assert name in str(e.value)


def test_lung_mask_separates_chest_from_abdomen():
    lung, body = lung_mask(chest_hu(128))
    assert has_lung(lung_fraction(lung, body))
    lung, body = lung_mask(chest_hu(128, lungs=False))
    assert not has_lung(lung_fraction(lung, body)) and body.sum() > 0.2 * body.size
    assert lung_fraction(*lung_mask(np.full((64, 64), -1000.0))) == 0.0


def make_study(root: Path, compress: str | None = None) -> Path:
    """One patient's study as a CD gives it: a lung and a soft-tissue reconstruction of 6 slices each (2 of them
    below the lungs), a localizer, a structured report and an MR image, in nested folders with uninformative names."""
    study = "1.2.826.0.1.3680043.8.498.7"
    for series, desc in (
        ("1.2.826.0.1.3680043.8.498.7.1", "LUNG 1.0 B70f"),
        ("1.2.826.0.1.3680043.8.498.7.2", "SOFT TISSUE 3.0 B30f"),
    ):
        for k in range(6):
            folder = root / f"DIR{series[-1]}" / f"SUB{k % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            hu = chest_hu(96, lungs=k < 4, covid=k in (1, 2), seed=k)
            write_dicom(
                folder / f"IM{(7 * k) % 6:04d}",
                hu,
                z=-2.0 * k,
                study=study,
                series=series,
                description=desc,
                instance=k + 1,
                compress=compress,
            )
    write_dicom(
        root / "DIR1" / "SCOUT",
        chest_hu(96),
        study=study,
        series="1.2.826.0.1.3680043.8.498.7.9",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    write_dicom(
        root / "SR0001", chest_hu(32), study=study, series="1.2.826.0.1.3680043.8.498.7.8", modality="SR", pixels=False
    )
    write_dicom(root / "MR0001", chest_hu(32), study=study, series="1.2.826.0.1.3680043.8.498.7.7", modality="MR")
    return root


def test_scan_groups_by_uid_skips_what_is_not_axial_ct_and_sorts_by_position(tmp_path):
    scan = scan_folder(make_study(tmp_path / "cd"))
    assert len(scan.studies()) == 1
    series = {s.description: s for s in scan.series}
    assert set(series) == {"LUNG 1.0 B70f", "SOFT TISSUE 3.0 B30f"}
    lung = series["LUNG 1.0 B70f"]
    assert [sl.instance for sl in lung.slices] == [6, 5, 4, 3, 2, 1]  # z = -10 ... 0 along the normal
    assert lung.looks_like_lung_reconstruction() and not series["SOFT TISSUE 3.0 B30f"].looks_like_lung_reconstruction()
    notes = " ".join(scan.skipped)
    assert "localizer" in notes and "not an image (SR" in notes and "modality MR, not CT" in notes


def test_gaps_and_mixed_orientation_are_noted(tmp_path):
    for k, z in enumerate((0, 2, 4, 10, 12)):
        write_dicom(tmp_path / f"s{k}.dcm", chest_hu(48), z=z, instance=k)
    write_dicom(tmp_path / "tilted.dcm", chest_hu(48), z=6, orientation=(1, 0, 0, 0, 0.8, 0.6))
    (s,) = scan_folder(tmp_path).series
    assert len(s.slices) == 5
    assert any("gap" in n for n in s.notes) and any("orientation" in n for n in s.notes)


def test_a_folder_without_dicom_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds no DICOM files"):
        scan_folder(tmp_path)


def test_dicomdir_is_read(tmp_path):
    from pydicom.fileset import FileSet

    src = make_study(tmp_path / "src")
    fs = FileSet()
    for p in sorted((src / "DIR1").rglob("IM*")):
        fs.add(p)
    fs.write(tmp_path / "cd")
    scan = scan_folder(tmp_path / "cd")
    assert [len(s.slices) for s in scan.series] == [6] and scan.skipped[0].startswith("read ")
