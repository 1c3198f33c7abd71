"""Found from outside, part three (issue 47), the parts that need no model: symlinked site folders, NIfTI in the input
limits, outputs that never overwrite inputs, and CSV cells that no spreadsheet runs."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.config import InputLimits
from covidct.data.inputs import list_inputs, volume_slices
from covidct.data.sources import external_set
from covidct.errors import ConfigError, DataError
from covidct.fileio import csv_text, files_under, read_csv, write_csv
from covidct.inference.predict import checked_outputs
from tests.medical_files import write_nifti


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    return path


def linked_site(tmp_path: Path, linked: int = 8, real: int = 2) -> Path:
    """A site folder as hospitals build them: class folders of patient folders, most of them links into an archive."""
    archive, site = tmp_path / "archive", tmp_path / "site"
    for i in range(linked + real):
        label = "COVID" if i % 2 else "NonCOVID"
        patient = (archive if i < linked else site / label) / f"p{i}"
        for k in range(4):
            _png(patient / f"s{k}.png", seed=10 * i + k)
        if i < linked:
            (site / label).mkdir(parents=True, exist_ok=True)
            os.symlink(patient, site / label / f"p{i}")
    return site


def test_a_site_of_linked_patient_folders_is_read_whole_and_counted_per_class(tmp_path, capsys):
    site = linked_site(tmp_path)
    name, samples = external_set(str(site))
    assert name == "site" and len(samples) == 40  # main read 8 of 40: the linked folders were skipped
    assert len({s.group for s in samples}) == 10
    said = capsys.readouterr().err
    assert "COVID 20 images in 5 groups" in said and "NonCOVID 20 images in 5 groups" in said


def test_all_links_and_a_loop_back_up(tmp_path):
    site = linked_site(tmp_path, linked=4, real=0)
    os.symlink(site, site / "COVID" / "p1" / "back-to-site")  # a loop: a link to a folder it lies in
    files = files_under(site)
    assert len(files) == 16 and all("back-to-site" not in str(f) for f in files)
    assert len(list_inputs([str(site)])) == len(files)
    os.symlink(tmp_path / "nowhere", site / "COVID" / "broken")
    assert len(files_under(site)) == len(files)


def link_fan_out(tmp_path: Path, depth: int) -> Path:
    """Folders d0..d{depth}, each holding two links to the next and the last one image: no loop, but 2**depth paths
    to that image when links are followed."""
    for i in range(depth):
        (tmp_path / f"d{i}").mkdir()
    _png(tmp_path / f"d{depth}" / "x.png")
    for i in range(depth):
        for name in ("a", "b"):
            os.symlink(tmp_path / f"d{i + 1}", tmp_path / f"d{i}" / name)
    return tmp_path / "d0"


def test_links_that_fan_out_are_refused_past_the_folder_limit(tmp_path):
    top = link_fan_out(tmp_path, depth=12)  # 2**12 paths to one image, 2**13 folders on the way
    assert len(files_under(top, most=20_000)) == 2**12  # under the limit, as they are (two links: two folders)
    with InputLimits(folder_entries=1_000).applied():
        with pytest.raises(DataError, match=r"d0: more than 1,000 files and folders .*--max-folder-entries"):
            list_inputs([str(top)])
        with pytest.raises(DataError, match="more than 1,000 files and folders"):
            external_set(str(top))


def test_a_folder_nested_deeper_than_the_recursion_limit_is_listed(tmp_path):
    import sys

    depth = sys.getrecursionlimit() + 50  # a recursive walk dies here with a RecursionError (a bare traceback)
    deepest = tmp_path
    try:
        for _ in range(depth):  # one by one: mkdir(parents=True) itself recurses
            deepest = deepest / "a"
            deepest.mkdir()
        _png(deepest / "x.png")
        assert files_under(tmp_path) == [deepest / "x.png"]
        assert list_inputs([str(tmp_path)]) == [deepest / "x.png"]
    finally:  # bottom up: shutil.rmtree (pytest's clean-up of its old folders) recurses as well
        (deepest / "x.png").unlink(missing_ok=True)
        while deepest != tmp_path:
            if deepest.is_dir():
                deepest.rmdir()
            deepest = deepest.parent


def alias_bomb(levels: int = 6) -> str:
    """A YAML list whose aliases of aliases stand for 9**levels strings ("billion laughs" at 9 levels)."""
    text = '[&a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]'
    for prev, name in zip("abcdefghi", "bcdefghij"[: levels - 1]):
        text += f", &{name} [{', '.join([f'*{prev}'] * 9)}]"
    return text + "]"


def test_yaml_aliases_are_refused_by_name_in_a_config_and_a_run_folder(tmp_path):
    from covidct.config import TrainConfig
    from covidct.runs import RunDir

    config = tmp_path / "bomb.yaml"
    config.write_text(f"model: efficientnet_lite0\nsources: {alias_bomb()}\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml cannot be read as YAML: found the alias \*a"):
        TrainConfig.from_yaml(config)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.read_text())
    with pytest.raises(ConfigError, match=r"run config .*config.yaml cannot be read as YAML: found the alias"):
        RunDir(run).raw_config()
    with pytest.raises(ConfigError, match="found the alias"):
        RunDir(run).config()
    config.write_text("model: &m efficientnet_lite0\n")  # an anchor nothing refers back to is plain YAML
    assert TrainConfig.from_yaml(config).model == "efficientnet_lite0"


@pytest.mark.parametrize("name", ["threshold.json", "summary.json", "model.json"])
def test_json_nested_deeper_than_the_parser_goes_is_refused_by_name(tmp_path, name):
    from covidct.errors import ModelError
    from covidct.runs import RunDir
    from covidct.runs.model_card import ModelCard

    path = tmp_path / name
    path.write_text('{"threshold": ' + "[" * 100_000 + "]" * 100_000 + "}")  # a RecursionError in json.loads
    read = {
        "threshold.json": lambda: RunDir(tmp_path).threshold_record(),
        "summary.json": lambda: RunDir(tmp_path).summary(),
        "model.json": lambda: ModelCard.read(path),
    }[name]
    with pytest.raises(ModelError, match=rf"{name} is not readable JSON \(nested deeper than a parser goes\); "):
        read()


@pytest.mark.parametrize("name", ["stack.tif", "moving.png"])
def test_a_file_of_several_pictures_is_refused_not_scored_by_its_first(tmp_path, name):
    from covidct.data.inputs import read_slice

    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)) for _ in range(3)]
    path = tmp_path / name
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(DataError, match=rf"{name} holds 3 pictures .*save each slice as its own file"):
        read_slice(path)
    pages[0].save(path)  # one picture: read as before
    assert read_slice(path).size == (64, 64)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_given_as_an_input_is_refused_not_waited_on(tmp_path):
    pipe = tmp_path / "scan.png"
    os.mkfifo(pipe)  # opening it to read waits for a writer: predict hung there
    with pytest.raises(DataError, match=r"scan.png is not a file or a folder \(a named pipe"):
        list_inputs([str(pipe)])
    (tmp_path / "x.png").symlink_to("/dev/null")  # a device behind a link: the same
    with pytest.raises(DataError, match="is not a file or a folder"):
        list_inputs([tmp_path / "x.png"])
    _png(tmp_path / "real.png")
    assert list_inputs([str(tmp_path)]) == [tmp_path / "real.png"]  # in a folder, neither is listed
    from covidct.data.images import load_rgb

    with pytest.raises(DataError, match=r"scan.png is not a file \(a named pipe"):  # as a data CSV may name it
        load_rgb(pipe)


def _nifti_header_only(path: Path, shape: tuple[int, ...]) -> Path:
    """A small .nii.gz whose header declares `shape` of int16 but that holds a few bytes of data."""
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.int16), np.eye(4))
    header = img.header.copy()
    header.set_data_shape(shape)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 64
    path.write_bytes(gzip.compress(raw))
    return path


@pytest.mark.parametrize(
    ("shape", "limit"),
    [((32000, 32000, 1), "pixels"), ((512, 512, 20000), "series_slices"), ((512, 512, 1900), "volume_mb")],
)
def test_nifti_is_checked_against_the_limits_from_its_header_before_decoding(tmp_path, shape, limit):
    path = _nifti_header_only(tmp_path / "big.nii.gz", shape)
    with InputLimits(volume_mb=256).applied(), pytest.raises(DataError, match=rf"big\.nii\.gz.*\({limit}\)"):
        next(volume_slices(path))


def test_a_nifti_shorter_than_its_header_or_cut_is_a_data_error_naming_it(tmp_path):
    short = _nifti_header_only(tmp_path / "short.nii.gz", (64, 64, 10))
    with pytest.raises(DataError, match=r"short\.nii\.gz is truncated or damaged"):
        next(volume_slices(short))
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(32, 32, 6)))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz"):
        list(volume_slices(cut))


def test_a_nifti_volume_is_read_once_with_its_scaling(tmp_path):
    import nibabel as nib

    stored = np.arange(4 * 3 * 5, dtype=np.int16).reshape(4, 3, 5)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(2.0, -1000.0)
    nib.save(img, str(tmp_path / "v.nii.gz"))
    slices = [hu for hu, _ in volume_slices(tmp_path / "v.nii.gz")]
    assert len(slices) == 5
    np.testing.assert_allclose(slices[3], stored[:, :, 3].T * 2.0 - 1000.0)


def test_out_is_checked_before_scoring(tmp_path):
    scan = _png(tmp_path / "x.png")
    with pytest.raises(ConfigError, match="is a folder"):
        checked_outputs(tmp_path, [scan])
    with pytest.raises(ConfigError, match="would be one file"):
        checked_outputs(tmp_path / "p.json", [scan])
    with pytest.raises(ConfigError, match="names an image or a scan"):
        checked_outputs(scan, [scan])
    csv_input = tmp_path / "list.csv"
    csv_input.write_text("not an input kind covidct reads, but given as one\n")
    with pytest.raises(ConfigError, match="would overwrite the input"):
        checked_outputs(csv_input, [csv_input])
    assert checked_outputs(tmp_path / "p.csv", [scan]) == (tmp_path / "p.csv", tmp_path / "p.json")
    assert scan.read_bytes()[:4] == b"\x89PNG"


NAMES = ['=HYPERLINK("x").png', "=cmd|' C calc'!A0.png", "+cmd.png", "@sum.png", "-1+1.png", "\tx.png", "\rx.png"]


def test_csv_cells_that_start_a_formula_are_neutralised_and_read_back_as_written(tmp_path):
    rows = [{"path": name, "score": -0.25, "text_number": "-0.5", "plain": "a.png"} for name in NAMES]
    text = csv_text(rows)
    import csv
    import io

    cells = [r["path"] for r in csv.DictReader(io.StringIO(text))]
    assert all(c.startswith("'") for c in cells), cells
    written = list(csv.DictReader(io.StringIO(text)))
    assert written[0]["score"] == "-0.25" and written[0]["text_number"] == "-0.5" and written[0]["plain"] == "a.png"
    write_csv(tmp_path / "p.csv", rows)
    assert [r["path"] for r in read_csv(tmp_path / "p.csv")] == NAMES
