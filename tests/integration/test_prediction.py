"""covidct predict: every input format on small files made here, volume aggregation, Grad-CAM, model loading."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.cli import main
from covidct.data.dicom_study import iter_series, scan_folder
from covidct.data.inputs import list_inputs, volume_slices
from covidct.data.medical import apply_window, read_dicom
from covidct.errors import DataError, ModelError
from covidct.inference.explain import explain
from covidct.inference.load import load_trained as load_model
from covidct.inference.predict import PredictOptions, predict_inputs
from covidct.verdict import aggregate_volume
from tests.conftest import synthetic_ct
from tests.medical_files import write_dicom, write_nifti

# HU values at the lung window's (-600 / 1500) black point, centre and white point, and beyond it.
HU = np.array([[-1350, -600], [150, 1000]], dtype=np.float32).repeat(8, 0).repeat(8, 1)


def test_lung_window_maps_known_hounsfield_units():
    assert apply_window(np.array([-2000, -1350, -600, 150, 3000]), -600, 1500).tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(DataError, match="width"):
        apply_window(HU, -600, 0)


@pytest.mark.parametrize(("intercept", "slope"), [(-1024.0, 1.0), (-2048.0, 2.0)])
def test_dicom_rescale_and_window(tmp_path, intercept, slope):
    img = np.asarray(read_dicom(write_dicom(tmp_path / "a.dcm", HU, intercept, slope)))
    assert img.shape == (16, 16, 3)
    assert [img[0, 0, 0], img[0, 8, 0], img[8, 0, 0], img[8, 8, 0]] == [0, 128, 255, 255]
    soft = np.asarray(read_dicom(tmp_path / "a.dcm", window=(40, 400)))  # a soft-tissue window
    assert [soft[0, 8, 0], soft[8, 0, 0]] == [0, 198]  # (150 + 160) / 400 x 255 = 197.6


def test_dicom_monochrome1_is_inverted(tmp_path):
    img = np.asarray(read_dicom(write_dicom(tmp_path / "m1.dcm", HU, photometric="MONOCHROME1")))
    assert [img[0, 0, 0], img[0, 8, 0], img[8, 0, 0]] == [255, 127, 0]


def test_dicom_without_pixels_is_named(tmp_path):
    path = write_dicom(tmp_path / "empty.dcm", HU, pixels=False)
    with pytest.raises(DataError, match=r"empty\.dcm has no pixel data"):
        read_dicom(path)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DataError, match=r"junk\.dcm"):
        read_dicom(tmp_path / "junk.dcm")


def test_dicom_series_is_ordered_by_position(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for name, z, value in (("a.dcm", 20.0, 150), ("b.dcm", 0.0, -1350), ("c.dcm", 10.0, -600)):
        write_dicom(series / name, np.full((8, 8), value, np.float32), z=z)
    (study,) = scan_folder(series).studies().values()
    greys = [grey for _, _, grey, _ in iter_series(study[0])]
    assert [int(g[0, 0]) for g in greys] == [0, 128, 255]  # z = 0, 10, 20
    assert list_inputs([str(series)]) == [series]  # a folder of DICOM files is one series


def test_nifti_slices(tmp_path):
    volume = np.full((16, 12, 5), -1350, np.float32)
    volume[:, :, 3] = 150
    volume[2, 0, 0] = 150  # x = 2, y = 0: row 0, column 2 once displayed
    slices = list(volume_slices(write_nifti(tmp_path / "v.nii.gz", volume)))
    assert len(slices) == 5 and slices[0][1].shape == (12, 16)
    hu, first = slices[0]
    assert first[0, 2] == 255 and first[2, 0] == 0 and hu[0, 2] == 150
    assert slices[3][1].min() == 255
    (tmp_path / "bad.nii").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"bad\.nii"):
        next(volume_slices(tmp_path / "bad.nii"))


def test_volume_aggregation_is_the_mean_of_the_top_tenth():
    scores = np.linspace(0, 1, 25)  # top ceil(2.5) = 3 slices: 1.0, 0.9583, 0.9167
    assert aggregate_volume(scores) == pytest.approx(np.mean(scores[-3:]))
    assert aggregate_volume(np.array([0.2, 0.7])) == pytest.approx(0.7)
    with pytest.raises(DataError):
        aggregate_volume(np.array([]))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A PNG, a 16-bit PNG, a JPEG, a DICOM file and a 6-slice NIfTI volume."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(3)
    Image.fromarray(synthetic_ct(rng, True, (64, 48))).save(root / "a.png")
    Image.fromarray(synthetic_ct(rng, False, (64, 48)).astype(np.uint16) * 200).save(root / "deep.png")
    Image.fromarray(synthetic_ct(rng, False, (50, 60))).convert("RGB").save(root / "b.jpg")
    write_dicom(root / "c.dcm", synthetic_ct(rng, True, (40, 40)).astype(np.float32) * 6 - 1350)
    vol = np.stack([synthetic_ct(rng, k % 2 == 0, (32, 32)).astype(np.float32) * 6 - 1350 for k in range(6)], -1)
    write_nifti(root / "vol.nii.gz", vol)
    return root


def test_predict_every_format(exported_model, inputs):
    model = load_model(exported_model)
    paths = list_inputs([str(inputs)])
    # the folder itself stands for its DICOM (grouped by study and series); images and volumes one by one
    assert [p.name for p in paths] == [inputs.name, "a.png", "b.jpg", "deep.png", "vol.nii.gz"]
    report = {}
    rows = predict_inputs(model, paths, report=report)
    assert len(rows) == 3 + (1 + 1 + 1) + (6 + 1)  # images; c.dcm as a 1-slice series + study; the volume
    volume = [r for r in rows if r["path"].endswith("vol.nii.gz")]
    assert [r["slice"] for r in volume] == [0, 1, 2, 3, 4, 5, "volume"]
    counted = np.array([r["score"] for r in volume[:-1] if r["counted"]])
    assert volume[-1]["score"] == pytest.approx(aggregate_volume(counted), abs=1e-6)
    for r in rows:
        assert r["threshold"] == model.threshold
        assert r["label"] == ("COVID" if r["score"] >= r["threshold"] else "NonCOVID")
    # each 8-bit image scores what the model gives the same file opened by PIL here, independently of covidct's
    # readers (a reader that flipped, inverted or rescaled the image would differ)
    for name in ("a.png", "b.jpg"):
        (row,) = [r for r in rows if r["path"].endswith(name)]
        expected = float(model.score_images([Image.open(inputs / name).convert("RGB")], check=False)[0][0])
        assert row["score"] == pytest.approx(expected, abs=1e-5), name
    assert len(report["studies"]) == 1 and report["studies"][0]["series"][0]["slices"] == 1
    forced = predict_inputs(model, paths[1:2], PredictOptions(threshold=0.0))
    assert forced[0]["label"] == "COVID"


def test_run_folder_loads_without_pickle_and_agrees_with_export(trained_run, exported_model, inputs):
    a, b = load_model(trained_run), load_model(exported_model)
    images = [Image.open(inputs / "a.png").convert("RGB"), Image.open(inputs / "b.jpg").convert("RGB")]
    (a_scores, _), (b_scores, _) = a.score_images(images, check=False), b.score_images(images, check=False)
    np.testing.assert_allclose(a_scores, b_scores, atol=1e-5)
    assert a.card.class_names == b.card.class_names and a.threshold == b.threshold


def test_gradcam_has_the_image_size_and_is_not_constant(exported_model, inputs):
    model = load_model(exported_model)
    image = Image.open(inputs / "b.jpg").convert("RGB")
    (cam,) = explain(model, [image])
    assert cam.shape == (60, 50)  # rows x columns of the 50 x 60 image
    assert cam.min() >= 0 and cam.max() <= 1 and cam.std() > 1e-3


def test_predict_cli_writes_csv_and_cams(exported_model, inputs, tmp_path, capsys):
    out, cams = tmp_path / "p.csv", tmp_path / "cams"
    assert (
        main(
            [
                "predict",
                str(exported_model),
                str(inputs / "a.png"),
                str(inputs / "vol.nii.gz"),
                "--out",
                str(out),
                "--cam",
                str(cams),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert [r["slice"] for r in rows] == ["", "0", "1", "2", "3", "4", "5", "volume"]
    assert all(not math.isnan(float(r["score"])) for r in rows)
    names = sorted(p.name for p in cams.iterdir())
    assert names == ["a_cam.png", "vol_top5_cam.png"]  # the volume: a montage of its top-5 slices with heat maps
    with Image.open(cams / "vol_top5_cam.png") as montage:
        assert montage.size == (5 * 256, 256)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["volumes"][0]["slices"] == 6 and len(report["volumes"][0]["top_slices"]) == 5
    with Image.open(cams / "a_cam.png") as overlay:
        assert overlay.size == (64, 48) and overlay.mode == "RGB"
    captured = capsys.readouterr()
    assert "research use only" in captured.err and "volume score" in captured.out


def test_predict_bad_inputs_are_named(exported_model, tmp_path, capsys):
    assert main(["predict", str(exported_model), str(tmp_path / "missing.png")]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["predict", str(exported_model), str(tmp_path / "notes.png"), "--out", str(tmp_path / "o.csv")]) == 2
    assert "notes.png cannot be read" in capsys.readouterr().err
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nothing")
    with pytest.raises(SystemExit):
        main(["predict", str(exported_model), "x.png", "--window", "-600/0"])


def test_predict_a_study_folder_as_a_cd_gives_it(exported_model, tmp_path, capsys):
    """Two reconstructions of one study, JPEG Lossless, in nested folders with a localizer, an SR and an MR
    image: two series results, one study result from the lung reconstruction, only lung slices counted."""
    from tests.data.test_dicom_study import make_study

    cd = make_study(tmp_path / "cd", compress="jpeg-lossless")
    out = tmp_path / "p.csv"
    assert main(["predict", str(exported_model), str(cd), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped:" in printed and "localizer" in printed
    rows = list(csv.DictReader(out.open()))
    assert [r["slice"] for r in rows].count("study") == 1 and [r["slice"] for r in rows].count("volume") == 2
    lung_rows = [r for r in rows if r["series"] == "LUNG 1.0 B70f" and r["slice"].isdigit()]
    assert [r["counted"] for r in lung_rows] == ["0", "0", "1", "1", "1", "1"]  # the two lowest: abdomen
    report = json.loads(out.with_suffix(".json").read_text())
    (study,) = report["studies"]
    assert study["from_series"] == "LUNG 1.0 B70f" and len(study["series"]) == 2
    lung = next(s for s in study["series"] if s["description"].startswith("LUNG"))
    assert lung["slices"] == 6 and lung["slices_in_lung"] == 4 and lung["slices_counted"] == 4
    assert "lung" in report["study_rule"]
    counted = [float(r["score"]) for r in lung_rows if r["counted"] == "1"]
    assert study["score"] == pytest.approx(aggregate_volume(np.array(counted)), abs=1e-5)


def test_an_unreadable_image_is_skipped_by_name_and_the_rest_scored(exported_model, tmp_path, capsys):
    """One policy for every input: an image that cannot be read is listed with its reason, as an unreadable DICOM
    slice is, and the command fails only when nothing could be scored."""
    folder = tmp_path / "slices"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for k in range(3):
        Image.fromarray(synthetic_ct(rng, k % 2 == 0, (64, 48))).save(folder / f"ok{k}.png")
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # a PNG cut after its signature
    (folder / "empty.nii.gz").write_bytes(b"")  # a volume, a DICOM folder: the same policy
    dicom = folder / "study"
    dicom.mkdir()
    (dicom / "junk.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 10)
    out = tmp_path / "p.csv"
    assert main(["predict", str(exported_model), str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped:" in printed and "cut.png" in printed and "empty.nii.gz" in printed and "junk.dcm" in printed
    with open(out) as f:
        assert sorted(Path(r["path"]).name for r in csv.DictReader(f)) == ["ok0.png", "ok1.png", "ok2.png"]
    assert any("cut.png" in s for s in json.loads(out.with_suffix(".json").read_text())["skipped"])
    assert main(["predict", str(exported_model), str(folder / "cut.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nothing could be scored" in err and "cut.png" in err


def test_hostile_names_a_cut_volume_and_out_collisions(exported_model, tmp_path, capsys, monkeypatch):
    """Names a spreadsheet would run are neutral cells in the CSV and kept as given in the JSON; a newline in a name
    stays on one console line; a truncated .nii.gz beside good inputs is skipped by name; an --out that would
    overwrite an input, be its own JSON or a folder is refused before scoring."""
    from tests.medical_files import chest_hu, write_nifti

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(6)
    names = ['=HYPERLINK("x").png', "+cmd.png", "@sum.png", "-1+1.png", "two\nlines.png"]
    for name in names:
        Image.fromarray(synthetic_ct(rng, True, (64, 48))).save(folder / name)
    volume = write_nifti(tmp_path / "v.nii.gz", np.stack([chest_hu(64, seed=k) for k in range(4)], axis=-1))
    (folder / "cut.nii.gz").write_bytes(volume.read_bytes()[: volume.stat().st_size // 2])
    out = tmp_path / "p.csv"
    monkeypatch.chdir(folder)  # `covidct predict MODEL .` in the folder: the names are the CSV's path cells
    assert main(["predict", str(exported_model), ".", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "two\\nlines.png: score" in printed and "skipped:" in printed and "cut.nii.gz" in printed
    with open(out, newline="") as f:
        cells = [r["path"] for r in csv.DictReader(f)]
    assert len(cells) == len(names) and not any(c.startswith(("=", "+", "@", "-")) for c in cells)
    report = json.loads(out.with_suffix(".json").read_text())
    assert sorted(Path(i["path"]).name for i in report["images"]) == sorted(names)
    scan = folder / "+cmd.png"
    before = scan.read_bytes()
    for bad, why in ((scan, "names an image"), (tmp_path / "p.json", "would be one file"), (folder, "is a folder")):
        assert main(["predict", str(exported_model), str(scan), "--out", str(bad)]) == 2
        assert why in capsys.readouterr().err
    assert scan.read_bytes() == before
