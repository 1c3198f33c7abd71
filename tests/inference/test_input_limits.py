"""The declared input limits (covidct.config.InputLimits), each refused by name before the bytes are decoded or
written: deflated DICOM, ZIP members and totals, pixels, the minimum side; and the threshold's one rule of validity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from covidct.config import INPUT_LIMITS, InputLimits, active_limits
from covidct.data.medical import open_dicom, read_dicom
from covidct.errors import ConfigError, DataError, ModelError
from covidct.inference.uploads import InputError, decode_upload, unpack_series_zip
from covidct.runs import RunDir
from covidct.runs.operating_point import OperatingPoint, checked_threshold
from tests.medical_files import deflated_dicom_bomb, write_dicom
from tests.upload_files import blank_png, zip_of


def test_limits_are_settings_checked_on_construction_and_applied_per_block():
    with pytest.raises(ConfigError, match="dicom_mb must be a number > 0"):
        InputLimits(dicom_mb=0)
    with pytest.raises(ConfigError, match="unknown config field"):
        InputLimits.from_dict({"upload": 3})
    small = InputLimits(pixels=100)
    with small.applied():
        assert active_limits() is small
    assert active_limits() is INPUT_LIMITS


def test_a_deflated_dicom_that_inflates_past_the_limit_is_refused_before_pydicom_reads_it(tmp_path):
    bomb = deflated_dicom_bomb(tmp_path / "bomb.dcm", 24 * 1024 * 1024)
    assert bomb.stat().st_size < 200_000  # 24 MB of pixels in a few tens of kB
    with InputLimits(dicom_mb=8).applied(), pytest.raises(DataError, match=r"bomb\.dcm.*inflates past.*dicom_mb"):
        open_dicom(bomb)
    with InputLimits(dicom_mb=8).applied(), pytest.raises(DataError, match="inflates past"):
        open_dicom(bomb.read_bytes(), "upload.dcm")  # an upload's bytes take the same way
    fine = deflated_dicom_bomb(tmp_path / "fine.dcm", 64 * 64 * 2)  # a real deflated slice still reads
    assert np.asarray(read_dicom(fine)).shape == (64, 64, 3)


def test_a_dicom_header_claiming_too_many_pixels_is_refused_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "s.dcm", np.zeros((64, 64), np.float32))
    with InputLimits(pixels=1000).applied(), pytest.raises(DataError, match=r"64x64 pixels is over the limit.*pixels"):
        read_dicom(path)
    packed = write_dicom(tmp_path / "rle.dcm", np.zeros((64, 64), np.float32), compress="rle")
    assert packed.stat().st_size < 5000 < 64 * 64 * 2  # small on disk, 8 kB once decoded
    with InputLimits(dicom_mb=0.005).applied(), pytest.raises(DataError, match=r"8,192 bytes of pixels.*dicom_mb"):
        read_dicom(packed)
    with InputLimits(dicom_mb=0.001).applied(), pytest.raises(DataError, match=r"over the limit.*dicom_mb"):
        open_dicom(path)  # a file larger than a decoded data set may be is not even read


def test_zip_members_of_exactly_one_mib_are_bounded_by_the_total_and_nothing_is_extracted(tmp_path):
    one_mib = bytes(1024 * 1024)
    bomb = zip_of({f"m{i}.dcm": one_mib for i in range(250)})  # 250 MiB from about 250 kB
    assert len(bomb) < 1024 * 1024
    with pytest.raises(InputError, match=r"expanded is over the limit of 200 MB \(expanded_mb\)") as e:
        unpack_series_zip(bomb, "b.zip", tmp_path, INPUT_LIMITS)
    assert e.value.status == 413 and list(tmp_path.iterdir()) == []
    few = zip_of({f"m{i}.dcm": one_mib for i in range(3)})  # under the total: each 1 MiB member's ratio refuses it
    with pytest.raises(InputError, match=r"expands \d+x, over the limit of 200x \(member_ratio\)"):
        unpack_series_zip(few, "f.zip", tmp_path, INPUT_LIMITS)
    with pytest.raises(InputError, match=r"3 files is over the limit of 2 \(archive_members\)"):
        unpack_series_zip(few, "f.zip", tmp_path, InputLimits(archive_members=2))
    with pytest.raises(InputError, match=r"over the limit of 0.5 MB \(member_mb\)"):
        unpack_series_zip(few, "f.zip", tmp_path, InputLimits(member_mb=0.5, member_ratio=1e9))
    assert list(tmp_path.iterdir()) == []


def test_images_under_the_minimum_side_or_over_the_pixel_limit_are_refused_by_name():
    with pytest.raises(InputError, match=r"dot\.png: 1x1 pixels is under the minimum of 32 pixels a side") as e:
        decode_upload(blank_png(1, 1), "dot.png")
    assert e.value.status == 422
    assert decode_upload(blank_png(32, 40), "ok.png").size == (32, 40)
    with InputLimits(pixels=1000).applied(), pytest.raises(InputError, match=r"40x40 pixels is over the limit"):
        decode_upload(blank_png(40, 40), "big.png")


@pytest.mark.parametrize("bad", [-1, 5, math.nan, math.inf, "abc", None, True, "0.5"])
def test_a_threshold_must_be_a_finite_number_in_0_1(bad):
    with pytest.raises(ModelError, match=r"where: 'threshold' must be a .*number in \[0, 1\].*covidct threshold"):
        checked_threshold(bad, "where: 'threshold'")


@pytest.mark.parametrize("value", [0, 0.0, 0.37, 1])
def test_a_good_threshold_is_kept(value):
    assert checked_threshold(value, "x") == float(value)


@pytest.mark.parametrize("text", ['{"threshold": NaN}', '{"threshold": -1}', '{"threshold": "abc"}', "{}", "[0.5]"])
def test_a_tampered_threshold_record_is_refused_naming_the_file(tmp_path, text):
    (tmp_path / "threshold.json").write_text(text)
    with pytest.raises(ModelError, match=r"threshold\.json"):
        RunDir(tmp_path).threshold_record()


def test_a_good_threshold_record_reads(tmp_path):
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 0.25, "rule": "given"}))
    point = RunDir(tmp_path).threshold_record()
    assert (point.threshold, point.where, point.checkpoint) == (0.25, "given", None)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"threshold_typo": 0.3}, r"unknown field\(s\) \['threshold_typo'\]"),
        ({"rule": "median"}, "'rule' must be one of"),
    ],
)
def test_a_threshold_record_with_an_unknown_field_or_rule_is_refused(tmp_path, extra, match):
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 0.25, **extra}))
    with pytest.raises(ModelError, match=match):
        RunDir(tmp_path).threshold_record()


def test_the_threshold_record_reads_back_what_its_one_writer_wrote(tmp_path):
    point = OperatingPoint(0.31, "youden", "val", "best.ckpt", metrics={"auc": 0.9}, previous_threshold=0.5)
    RunDir(tmp_path).write_threshold_record(point)
    assert json.loads((tmp_path / "threshold.json").read_text())["val_metrics"] == {"auc": 0.9}
    assert RunDir(tmp_path).threshold_record() == point
    want = {"threshold": 0.31, "rule": "youden", "chosen_on": "val", "set": None, "chosen_at": None}
    assert point.summary() == want
