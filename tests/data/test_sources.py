import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.cli import main
from covidct.data.datasets import Sample, covid_ct_group, group_split
from covidct.data.downloads.kaggle import DATASET, download_sars_cov_2_ct
from covidct.data.sources import (
    external_set,
    known_sources,
    load_source,
    load_sources,
    parse_source,
    sars_group,
    source_dir,
)
from covidct.errors import DataError
from tests.conftest import TINY_COUNTS, make_covidct_layout, make_sars_layout, synthetic_ct


def test_known_sources_carry_citation_licence_counts_and_how_to_get_them():
    infos = {i.name: i for i in known_sources()}
    assert {"covid-ct", "sars-cov-2-ct"} <= set(infos)
    sars = infos["sars-cov-2-ct"]
    assert "Soares" in sars.citation and "CC BY-NC-SA" in sars.licence
    assert sars.counts == {"NonCOVID": 1229, "COVID": 1252}
    assert "kaggle" in sars.how_to_get and "no" in sars.groups.lower()


def test_covid_ct_groups_are_source_papers():
    assert covid_ct_group("2020.01.24.919183-p27-132.png") == "2020.01.24.919183"
    assert covid_ct_group("kjr-21-e24-p5-29.png") == "kjr-21-e24"
    assert covid_ct_group("71%0.jpg") == "71" and covid_ct_group("71%1.jpg") == "71"


def test_group_split_never_straddles_and_stays_stratified():
    rng = np.random.default_rng(0)
    samples = [
        Sample(Path(f"g{g}/{i}.png"), int(g % 2), "s", f"g{g}") for g in range(40) for i in range(rng.integers(1, 6))
    ]
    splits = group_split(samples, seed=3)
    where = {}
    for split, members in splits.items():
        for s in members:
            assert where.setdefault(s.group, split) == split
    assert sum(len(v) for v in splits.values()) == len(samples)
    for split in ("val", "test"):
        labels = [s.label for s in splits[split]]
        assert 0 < np.mean(labels) < 1 and 0.08 * len(samples) < len(labels) < 0.25 * len(samples)
    assert group_split(samples, seed=3) == splits and group_split(samples, seed=4) != splits


def test_sars_source_split_is_seeded_and_says_there_are_no_patient_ids(tmp_path):
    root = make_sars_layout(tmp_path / "sars", 20, 20)
    a = load_source(f"sars-cov-2-ct={root}", seed=1)
    assert a.notes and "no patient IDs" in a.notes[0]
    assert {s.source for ss in a.splits.values() for s in ss} == {"sars-cov-2-ct"}
    assert sum(len(v) for v in a.splits.values()) == 40
    assert load_source(f"sars-cov-2-ct={root}", seed=1).splits == a.splits


def test_sars_splits_keep_blocks_of_consecutive_file_numbers_together(tmp_path):
    """Neighbouring numbers are neighbouring slices of one patient: a block never straddles two splits."""
    root = make_sars_layout(tmp_path / "sars", 200, 200, size=(16, 16))
    split_of = {s.path.name: split for split, ss in load_source(f"sars-cov-2-ct={root}").splits.items() for s in ss}
    for prefix in ("Covid", "Non-Covid"):
        for block in range(10):  # files 1-19, 20-39, ..., 180-199 (and 200 in the eleventh)
            members = {split_of[f"{prefix} ({n}).png"] for n in range(max(1, 20 * block), 20 * block + 20)}
            assert len(members) == 1, (prefix, block, members)
        assert len({split_of[f"{prefix} ({n}).png"] for n in range(1, 201)}) == 3
    small = make_sars_layout(tmp_path / "small", 30, 30, size=(16, 16))  # too few blocks: slices split alone
    assert {len(v) > 0 for v in load_source(f"sars-cov-2-ct={small}").splits.values()} == {True}
    assert sars_group(Path("Covid (134).png"), "COVID") == "COVID:6"
    assert sars_group(Path("scan.png"), "COVID") == ""


def test_partial_source_is_refused_with_counts(tmp_path, monkeypatch):
    monkeypatch.delenv("COVIDCT_ALLOW_PARTIAL_SOURCES")
    root = make_sars_layout(tmp_path / "sars", 5, 5)
    monkeypatch.setenv("COVIDCT_DATA_ROOT", str(tmp_path))
    (tmp_path / "sars-cov-2-ct").symlink_to(root)
    with pytest.raises(DataError, match=r"partial \(NonCOVID: 5 of 1229, COVID: 5 of 1252"):
        load_source("sars-cov-2-ct")


def test_missing_source_folder_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDCT_DATA_ROOT", str(tmp_path))
    assert source_dir("sars-cov-2-ct") == tmp_path / "sars-cov-2-ct"
    with pytest.raises(DataError, match="does not exist; get it with: covidct data download --source sars-cov-2-ct"):
        load_source("sars-cov-2-ct")


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(DataError, match=r"unknown source 'mimic'.*covid-ct, sars-cov-2-ct"):
        parse_source("mimic")


def test_user_csv_with_groups_and_sources(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        label = "covid" if i % 2 else "normal"
        p = tmp_path / f"img{i}.png"
        Image.fromarray(synthetic_ct(rng, label == "covid")).save(p)
        rows.append({"path": p.name, "label": label, "group": f"patient{i // 3}", "source": "hospital-a"})
    with open(tmp_path / "mine.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    data = load_source(str(tmp_path / "mine.csv"))
    assert data.class_names == ("NonCOVID", "COVID")
    covid = {s.path.name for ss in data.splits.values() for s in ss if s.label == 1}
    assert covid == {f"img{i}.png" for i in range(1, 60, 2)}
    seen = {}
    for split, ss in data.splits.items():
        for s in ss:
            assert seen.setdefault(s.group, split) == split and s.source == "hospital-a"


def test_unmappable_and_single_class_folders(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "odd" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(synthetic_ct(rng, False)).save(tmp_path / "odd" / cls / f"{i}.png")
    with pytest.raises(DataError, match=r"class names \['cats', 'dogs'\] cannot be mapped"):
        load_source(str(tmp_path / "odd"))
    (tmp_path / "one" / "COVID").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(synthetic_ct(rng, True)).save(tmp_path / "one" / "COVID" / f"{i}.png")
    with pytest.raises(DataError, match="one class only"):
        load_sources([str(tmp_path / "one")])
    (tmp_path / "one" / "COVID" / "patient7").mkdir()  # a patient's folder in a one-class export: its group
    Image.fromarray(synthetic_ct(rng, True)).save(tmp_path / "one" / "COVID" / "patient7" / "s1.png")
    name, samples = external_set(str(tmp_path / "one"))
    assert name == "one" and [s.label for s in samples] == [1, 1, 1, 1]
    assert [s.group for s in samples] == ["", "", "", "COVID/patient7"]


def test_several_sources_keep_their_names(tmp_path):
    a = make_covidct_layout(tmp_path / "cc", TINY_COUNTS)
    b = make_sars_layout(tmp_path / "sars", 10, 10)
    data = load_sources([f"covid-ct={a}", f"sars-cov-2-ct={b}"])
    counts = data.source_counts()
    assert set(counts) == {"covid-ct", "sars-cov-2-ct"}
    assert counts["covid-ct"]["train"] == {"NonCOVID": 8, "COVID": 8}
    with pytest.raises(DataError, match="named twice"):
        load_sources([f"covid-ct={a}", f"covid-ct={a}"])


def test_data_sources_cli(capsys):
    assert main(["data", "sources"]) == 0
    out = capsys.readouterr().out
    assert "sars-cov-2-ct: SARS-CoV-2 CT-scan dataset" in out and "CC BY-NC-SA" in out and "covid-ct:" in out


# ---- the Kaggle download, with the API client replaced (no network) -------------------------------------------


class FakeKaggle:
    """Stands in for KaggleApi: writes the archive Kaggle would (RGB and RGBA PNGs under COVID/ and non-COVID/)."""

    def __init__(self, n: int = 6, fail: bool = False):
        self.n, self.fail, self.calls = n, fail, []

    def dataset_download_files(self, dataset, path, unzip, quiet):
        self.calls.append(dataset)
        if self.fail:
            raise OSError("403 Forbidden")
        rng = np.random.default_rng(0)
        with zipfile.ZipFile(Path(path) / "sarscov2-ctscan-dataset.zip", "w") as zf:
            for folder, covid in (("COVID", True), ("non-COVID", False)):
                for i in range(self.n):
                    img = Image.fromarray(synthetic_ct(rng, covid)).convert("RGBA" if not covid else "RGB")
                    tmp = Path(path) / "x.png"
                    img.save(tmp)
                    zf.write(tmp, f"{folder}/{'Covid' if covid else 'Non-Covid'} ({i}).png")
            zf.writestr("../evil.png", b"climbs out")


def test_kaggle_download_converts_to_grey_and_installs(tmp_path):
    api = FakeKaggle(6)
    dest = download_sars_cov_2_ct(tmp_path / "sars", api=api, expected={"COVID": 6, "nonCOVID": 6})
    assert api.calls == [DATASET]
    files = sorted((dest / "COVID").glob("*.png")) + sorted((dest / "nonCOVID").glob("*.png"))
    assert len(files) == 12 and {Image.open(f).mode for f in files} == {"L"}
    assert not (tmp_path / "evil.png").exists() and not list(tmp_path.glob(".*partial"))


def test_kaggle_failures_leave_nothing(tmp_path):
    with pytest.raises(DataError, match=r"Kaggle download .* failed .*403.*kaggle\.json"):
        download_sars_cov_2_ct(tmp_path / "sars", api=FakeKaggle(fail=True))
    with pytest.raises(DataError, match="too few images"):
        download_sars_cov_2_ct(tmp_path / "sars", api=FakeKaggle(2), expected={"COVID": 6, "nonCOVID": 6})
    assert not (tmp_path / "sars").exists() and not list(tmp_path.iterdir())


def test_kaggle_without_credentials_is_one_clear_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("kaggle")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "none"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    assert main(["data", "download", "--source", "sars-cov-2-ct", "--dest", str(tmp_path / "sars")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("covidct: error: Kaggle credentials are missing or wrong") and "kaggle.json" in err
    assert not (tmp_path / "sars").exists()


def test_a_labelled_folder_of_hospital_dicom_slices_is_a_source(tmp_path):
    """Hospitals export slices as DICOM, with or without a .dcm suffix: a labelled folder of them is read in the
    lung window, one sample per slice, beside ordinary images; other files are ignored."""
    from covidct.data.images import image_header, load_rgb
    from covidct.data.medical import read_dicom
    from tests.medical_files import chest_hu, write_dicom

    root = tmp_path / "hospital"
    for label, covid in (("COVID", True), ("NonCOVID", False)):
        (root / label).mkdir(parents=True)
        for i in range(2):
            write_dicom(root / label / f"s{i}.dcm", chest_hu(64, covid=covid, seed=i), instance=i + 1)
        write_dicom(root / label / "IM000099", chest_hu(64, covid=covid, seed=9))  # no suffix, as PACS exports
    Image.fromarray(synthetic_ct(np.random.default_rng(0), True)).save(root / "COVID" / "figure.png")
    (root / "COVID" / "notes.txt").write_text("not an image")
    (root / "NonCOVID" / "README").write_text("no suffix, not DICOM either")
    name, samples = external_set(f"hospital={root}")
    names = sorted((s.path.parent.name, s.path.name) for s in samples)
    assert name == "hospital" and len(samples) == 7
    assert ("COVID", "IM000099") in names and ("COVID", "figure.png") in names and ("NonCOVID", "README") not in names
    dcm = root / "COVID" / "s0.dcm"
    img = load_rgb(dcm)
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), np.asarray(read_dicom(dcm).convert("RGB")))
    assert image_header(dcm) == ("HU", "DICOM", (64, 64))
    assert image_header(root / "COVID" / "figure.png")[1] == "PNG"
    (root / "COVID" / "broken.dcm").write_bytes(b"\0" * 132)
    with pytest.raises(DataError, match=r"broken\.dcm"):
        load_rgb(root / "COVID" / "broken.dcm")
    with pytest.raises(DataError, match=r"broken\.dcm is not a readable DICOM"):
        image_header(root / "COVID" / "broken.dcm")


def test_a_patients_subfolder_never_straddles_splits(tmp_path):
    """DIR/<class>/<patient>/slices (how hospital exports are laid out): each patient's slices in one split."""
    from covidct.data.datasets import load_splits

    rng = np.random.default_rng(0)
    for label, covid in (("COVID", True), ("NonCOVID", False)):
        for patient in range(8):
            folder = tmp_path / label / f"patient{patient}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(synthetic_ct(rng, covid)).save(folder / f"slice{i}.png")
        Image.fromarray(synthetic_ct(rng, covid)).save(tmp_path / label / "loose.png")  # no subfolder: alone
    data = load_splits(tmp_path, seed=3)
    where = {}
    for split, samples in data.splits.items():
        assert samples, f"{split} is empty"
        for s in samples:
            if s.group:
                assert where.setdefault(s.group, split) == split, f"{s.group} straddles {where[s.group]} and {split}"
    assert len(where) == 16 and all(g.split("/")[0] in ("COVID", "NonCOVID") for g in where)
    assert sum(len(v) for v in data.splits.values()) == 2 * (8 * 3 + 1)
    assert "each subfolder in one split" in data.source


@pytest.mark.parametrize(
    "classes,message",
    [(("COVID",), r"holds one class only \(COVID\).*--on"), (("COVID", "Other"), "cannot be mapped")],
)
def test_a_folder_whose_labels_cannot_be_told_is_refused_for_training_and_evaluation(tmp_path, classes, message):
    from covidct.data import load_splits
    from covidct.data.sources import checked_labels

    for name in classes:
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("L", (40, 40), 10 * i).save(tmp_path / name / f"{i}.png")
    with pytest.raises(DataError, match=message):
        checked_labels(load_splits(tmp_path), str(tmp_path))
    (tmp_path / "NonCOVID").mkdir()
    for i in range(4):
        Image.new("L", (40, 40), 10 * i).save(tmp_path / "NonCOVID" / f"{i}.png")
    if classes == ("COVID",):
        assert checked_labels(load_splits(tmp_path), str(tmp_path)).class_names == ("NonCOVID", "COVID")
