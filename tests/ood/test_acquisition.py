"""The acquisition check: a DICOM or NIfTI input's scanner, kernel and spacing against what the training images held,
read from headers the tests write themselves."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from covidct.errors import ModelError
from covidct.inference.uploads import upload_acquisition
from covidct.ood.acquisition import DICOM, IMAGE_FILE, NIFTI, Acquisition, AcquisitionRecord, of_file
from covidct.ood.fit import DetectorRecipe, fit_detector
from covidct.ood.storage import load_detector, save_detector
from tests.medical_files import write_dicom, write_nifti

HU = np.full((16, 16), -800.0, np.float32)


def scanner_slice(path, manufacturer="SIEMENS", kernel="B70f", spacing=0.7, thickness=1.0):
    """A CT slice whose header names its scanner, kernel, pixel spacing and slice thickness."""
    import pydicom

    write_dicom(path, HU)
    ds = pydicom.dcmread(path)
    ds.Manufacturer, ds.ConvolutionKernel = manufacturer, kernel
    ds.PixelSpacing, ds.SliceThickness = [spacing, spacing], thickness
    ds.save_as(path)
    return path


def test_headers_are_read_without_pixels(tmp_path):
    assert of_file(scanner_slice(tmp_path / "a.dcm", " siemens ", "B70f", 0.68, 1.5)) == Acquisition(
        DICOM, "SIEMENS", "B70F", 0.68, 1.5
    )
    assert of_file(tmp_path / "missing.png") == Acquisition(IMAGE_FILE)  # unreadable: the kind alone, no error
    Image.new("L", (60, 40)).save(tmp_path / "wide.png")
    assert of_file(tmp_path / "wide.png") == Acquisition(IMAGE_FILE, aspect=1.5)  # width / height from the header
    volume = write_nifti(tmp_path / "v.nii.gz", np.zeros((8, 8, 4), np.float32))
    assert of_file(volume).kind == NIFTI
    assert of_file(write_dicom(tmp_path / "bare.dcm", HU)) == Acquisition(DICOM)  # no tags: empty, not an error


def test_a_model_trained_on_image_files_flags_every_scanner_acquisition(tmp_path):
    record = AcquisitionRecord.of_paths([tmp_path / f"{i}.png" for i in range(5)])
    assert record.kinds == {IMAGE_FILE: 5} and record.scanners == []
    why = record.unseen(of_file(scanner_slice(tmp_path / "a.dcm")))
    assert why is not None and "image files only (5)" in why
    assert record.unseen(Acquisition(NIFTI)) is not None
    assert record.unseen(Acquisition(IMAGE_FILE)) is None  # no shape recorded: the image detector alone decides
    assert "every DICOM or NIfTI input is flagged" in record.summary()


def test_a_model_trained_on_a_scanner_passes_it_and_flags_another(tmp_path):
    seen = [scanner_slice(tmp_path / f"s{i}.dcm", spacing=s, thickness=1.0) for i, s in enumerate((0.6, 0.8))]
    record = AcquisitionRecord.of_paths(seen)
    assert record.scanners == [("SIEMENS", "B70F")] and record.pixel_spacing == (0.6, 0.8)
    assert record.unseen(of_file(scanner_slice(tmp_path / "same.dcm", spacing=0.7))) is None
    assert record.unseen(Acquisition(DICOM, "SIEMENS", "B70F", 0.8 * 1.1, 1.0)) is None  # within the tolerance
    other_kernel = record.unseen(of_file(scanner_slice(tmp_path / "k.dcm", kernel="B30f")))
    assert other_kernel is not None and "kernel B30F not seen" in other_kernel
    other_vendor = record.unseen(Acquisition(DICOM, "GE MEDICAL SYSTEMS", "B70F", 0.7, 1.0))
    assert other_vendor is not None and "GE MEDICAL SYSTEMS" in other_vendor
    wide = record.unseen(Acquisition(DICOM, "SIEMENS", "B70F", 1.4, 1.0))
    assert wide is not None and "pixel spacing 1.4 mm outside the 0.6-0.8 mm" in wide
    thick = record.unseen(Acquisition(DICOM, "SIEMENS", "B70F", 0.7, 5.0))
    assert thick is not None and "slice thickness 5 mm" in thick


def test_an_image_shaped_unlike_the_training_images_is_flagged(tmp_path):
    """Training figures wider than tall (4:3 to 3:2, as COVID-CT's are); a square scanner slice is flagged by its
    header alone, a figure within the tolerance is not, and the range ignores a few odd training images."""
    paths = []
    for i, width in enumerate([40 + i % 21 for i in range(200)] + [30]):  # aspects 1.33-2.0, and one square
        paths.append(tmp_path / f"{i}.png")
        Image.new("L", (width, 30)).save(paths[-1])
    record = AcquisitionRecord.of_paths(paths)
    assert record.aspect is not None and record.aspect[0] == pytest.approx(40 / 30) and record.aspect[1] == 2.0
    square = record.unseen(Acquisition(IMAGE_FILE, aspect=1.0))
    assert square is not None and "aspect 1.00 (width / height), outside the 1.33-2.00" in square
    assert record.unseen(Acquisition(IMAGE_FILE, aspect=1.30)) is None  # within 5% of the range
    assert record.unseen(Acquisition(IMAGE_FILE, aspect=2.2)) is not None
    assert record.unseen(Acquisition(IMAGE_FILE)) is None  # a shape that could not be read: no verdict
    site = Acquisition(DICOM, "SIEMENS", "B70F", 0.7, 1.0)  # a site's few slices: judged by their headers alone
    mixed = AcquisitionRecord.of([Acquisition(IMAGE_FILE, aspect=1.5)] * 300 + [site])
    assert mixed.aspect == (1.5, 1.5) and mixed.unseen(site) is None
    square_site = [Acquisition(IMAGE_FILE, aspect=1.5)] * 300 + [Acquisition(IMAGE_FILE, aspect=1.0)] * 2
    pooled = AcquisitionRecord.of(square_site)  # a site's two square images: the big source's outliers...
    assert pooled.aspect == (1.5, 1.5) and pooled.unseen(Acquisition(IMAGE_FILE, aspect=1.0)) is not None
    by_source = AcquisitionRecord.of(square_site, ["a"] * 300 + ["site"] * 2)  # ...unless each source has its range
    assert by_source.aspect == (1.0, 1.5) and by_source.unseen(Acquisition(IMAGE_FILE, aspect=1.0)) is None
    assert "image aspects 1.33-2.00" in record.summary()
    assert upload_acquisition((tmp_path / "0.png").read_bytes()) == Acquisition(IMAGE_FILE, aspect=40 / 30)
    save_detector(_detector(record), tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    assert loaded is not None and loaded.acquisitions == record
    card = json.loads((tmp_path / "det" / "ood.json").read_text())
    del card["acquisitions"]["aspect"]  # a record written before the aspect was kept
    (tmp_path / "det" / "ood.json").write_text(json.dumps(card))
    older = load_detector(tmp_path / "det")
    assert older is not None and older.unseen_acquisition(Acquisition(IMAGE_FILE, aspect=1.0)) is None


def _detector(record=None):
    rng = np.random.default_rng(0)
    detector = fit_detector(
        rng.normal(size=(40, 6)), rng.normal(size=(20, 6)), "resnet10t", DetectorRecipe("mahalanobis")
    )
    detector.acquisitions = record
    return detector


def test_the_record_travels_in_ood_json_and_an_older_detector_has_none(tmp_path):
    record = AcquisitionRecord({IMAGE_FILE: 3, DICOM: 2}, [("SIEMENS", "B70F")], (0.6, 0.8), (1.0, 1.0))
    save_detector(_detector(record), tmp_path / "new")
    loaded = load_detector(tmp_path / "new")
    assert loaded is not None and loaded.acquisitions == record
    assert loaded.unseen_acquisition(Acquisition(DICOM, "GE", "STANDARD", 0.7, 1.0)) is not None
    assert "SIEMENS / B70F" in loaded.card()["acquisitions_seen"]
    save_detector(_detector(None), tmp_path / "old")
    older = load_detector(tmp_path / "old")
    assert older is not None and older.acquisitions is None
    assert older.unseen_acquisition(Acquisition(DICOM)) is None  # no record: no acquisition check, no crash


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kinds", {"DICOM": "two"}),
        ("kinds", {"film": 1}),
        ("scanners", [["SIEMENS"]]),
        ("pixel_spacing", [0.7]),
        ("slice_thickness", [-1, 2]),
        ("aspect", [0, 1.5]),
        ("aspect", "wide"),
        ("(the whole record)", "all of it"),
    ],
)
def test_a_malformed_record_is_refused_naming_the_field(tmp_path, field, value):
    record = AcquisitionRecord({IMAGE_FILE: 3}, [])
    save_detector(_detector(record), tmp_path)
    card = json.loads((tmp_path / "ood.json").read_text())
    card["acquisitions"] = value if field == "(the whole record)" else {**card["acquisitions"], field: value}
    (tmp_path / "ood.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=re.escape(f"acquisitions.{field} is malformed")):
        load_detector(tmp_path)
