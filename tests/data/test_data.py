import re

import numpy as np
import pytest
import torch
from PIL import Image

from covidct.data import (
    CLASS_NAMES,
    ImageDataset,
    eval_transform,
    load_rgb,
    load_splits,
    to_rgb,
    train_transform,
)
from covidct.data.audit.info import dataset_info, format_info
from covidct.data.datasets import class_order, stratified_split
from covidct.data.preprocessing import Preprocessing
from covidct.errors import DataError
from tests.conftest import TINY_COUNTS


def test_official_split_parsing_exact_counts(tiny_dataset):
    data = load_splits(tiny_dataset)
    assert data.class_names == CLASS_NAMES == ("NonCOVID", "COVID")
    assert data.counts() == {s: {"NonCOVID": c["NonCOVID"], "COVID": c["COVID"]} for s, c in TINY_COUNTS.items()}
    covid = [s for s in data.splits["train"] if s.label == 1]
    assert all("CT_COVID" in str(s.path) for s in covid)


def test_missing_data_folder_message(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*covidct data download"):
        load_splits(tmp_path / "nowhere")


def test_split_naming_missing_file(tiny_dataset):
    (tiny_dataset / "Images-processed" / "CT_COVID" / "covid_0.png").unlink()
    with pytest.raises(DataError, match=r"trainCT_COVID\.txt names 1 file\(s\) missing.*covid_0\.png"):
        load_splits(tiny_dataset)


def test_missing_split_file(tiny_dataset):
    (tiny_dataset / "Data-split" / "NonCOVID" / "valCT_NonCOVID.txt").unlink()
    with pytest.raises(DataError, match=r"valCT_NonCOVID\.txt does not exist"):
        load_splits(tiny_dataset)


def test_class_per_folder_with_seeded_split(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("covid", "normal"):
        (tmp_path / cls).mkdir()
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    a, b = load_splits(tmp_path, seed=1), load_splits(tmp_path, seed=1)
    assert a.class_names == ("normal", "covid")  # the negative class is 0
    assert sum(len(v) for v in a.splits.values()) == 40
    assert {s: [x.path for x in v] for s, v in a.splits.items()} == {
        s: [x.path for x in v] for s, v in b.splits.items()
    }
    paths = [x.path for v in a.splits.values() for x in v]
    assert len(paths) == len(set(paths))


def test_a_class_folders_files_that_are_not_slices_are_left_out_with_a_warning_naming_them(tmp_path, caplog):
    for cls in ("covid", "normal"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.new("L", (16, 16)).save(tmp_path / cls / f"{i}.png")
    Image.new("L", (16, 16)).save(tmp_path / "covid" / "scan.gif")  # a picture in a format covidct does not read
    (tmp_path / "covid" / ".DS_Store").write_text("x")  # hidden: not counted
    with caplog.at_level("WARNING", logger="covidct"):
        data = load_splits(tmp_path, seed=1)
    assert sum(len(v) for v in data.splits.values()) == 8
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "1 file(s) left out" in warned[0] and "scan.gif" in warned[0]


def test_csv_source_with_and_without_split(tmp_path):
    for i in range(12):
        Image.new("L", (8, 8), i * 10).save(tmp_path / f"{i}.png")
    rows = ["path,label,split"] + [
        f"{i}.png,{'covid' if i % 2 else 'noncovid'},{'train' if i < 6 else ''}" for i in range(12)
    ]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    data = load_splits(tmp_path, data_csv=tmp_path / "d.csv")
    assert data.class_names == ("noncovid", "covid")
    assert len(data.splits["train"]) >= 6
    assert sum(len(v) for v in data.splits.values()) == 12
    assert data.splits["train"][0].path == tmp_path / "0.png"


def test_csv_bad_split_value_is_named(tmp_path):
    (tmp_path / "d.csv").write_text("path,label,split\na.png,covid,training\n")
    with pytest.raises(DataError, match=r"line 2.*'training'"):
        load_splits(tmp_path, data_csv=tmp_path / "d.csv")


def test_an_image_listed_twice_in_a_data_csv_is_refused_naming_both_lines(tmp_path):
    """In train and test, the test figures would be of an image trained on: refused, as is the same file under
    another spelling of its path."""
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("path,label,split\na.png,covid,train\nb.png,covid,val\n./a.png,covid,test\n")
    with pytest.raises(DataError, match=r"d\.csv line 4: .*a\.png is listed already on line 2"):
        load_splits(tmp_path, data_csv=tmp_path / "d.csv")


def test_an_image_in_two_official_split_files_is_refused_naming_it(tiny_dataset):
    split_file = tiny_dataset / "Data-split" / "COVID" / "testCT_COVID.txt"
    train_name = (tiny_dataset / "Data-split" / "COVID" / "trainCT_COVID.txt").read_text().split()[0]
    split_file.write_text(split_file.read_text().rstrip("\n") + "\n" + train_name + "\n")
    with pytest.raises(DataError, match=f"{re.escape(train_name)} is in the train and the test split"):
        load_splits(tiny_dataset)


def test_stratified_split_partitions():
    from covidct.data.datasets import Sample

    samples = [Sample(f"{i}.png", i % 2) for i in range(40)]
    out = stratified_split(samples, seed=3)
    flat = [s for v in out.values() for s in v]
    assert sorted(map(str, (s.path for s in flat))) == sorted(str(s.path) for s in samples)
    for split in out:
        assert {s.label for s in out[split]} == {0, 1}


def test_class_order():
    assert class_order(["CT_COVID", "CT_NonCOVID"]) == ("CT_NonCOVID", "CT_COVID")
    assert class_order(["b", "a"]) == ("a", "b")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    arr = np.linspace(0, 1, 24 * 16).reshape(16, 24)
    if mode in ("I;16", "I"):
        img = Image.fromarray((arr * 60000).astype(np.uint16 if mode == "I;16" else np.int32))
    elif mode == "F":
        img = Image.fromarray((arr * 3000 - 1000).astype(np.float32))
    else:
        img = Image.fromarray((arr * 255).astype(np.uint8)).convert(mode)
    assert img.mode == mode
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (24, 16)
    px = np.asarray(out)
    assert px[..., 0].min() <= 5 and px[..., 0].max() >= 250  # the full range survives (16-bit is not clipped)


def test_16bit_png_roundtrip(tmp_path):
    arr = np.arange(0, 65536, 256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    img = load_rgb(tmp_path / "x.png")
    assert img.mode == "RGB" and np.asarray(img).max() == 255 and np.asarray(img).min() == 0


def test_truncated_and_unreadable_images_named(tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match=r"cut\.png cannot be read"):
        load_rgb(tmp_path / "cut.png")
    with pytest.raises(DataError, match=r"text\.png cannot be read"):
        load_rgb(tmp_path / "text.png")
    with pytest.raises(DataError, match=r"nope\.png does not exist"):
        load_rgb(tmp_path / "nope.png")


def test_preload_lists_every_bad_image(tiny_dataset):
    data = load_splits(tiny_dataset)
    bad = [data.splits["train"][0].path, data.splits["train"][-1].path]
    for p in bad:
        p.write_bytes(b"garbage")
    ds = ImageDataset(data.splits["train"], cache=True)
    with pytest.raises(DataError, match=r"2 image\(s\) cannot be used") as e:
        ds.preload()
    assert all(p.name in str(e.value) for p in bad)


def test_dataset_items_and_transforms(tiny_dataset):
    data = load_splits(tiny_dataset)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    ds = ImageDataset(data.splits["train"], train_transform(Preprocessing(mean, std, 32, 36)), cache=True)
    item = ds[0]
    assert set(item) == {"image", "label", "path", "index"} and item["index"] == 0
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    first = data.splits["train"][0]
    assert item["label"] == first.label and item["path"] == str(first.path)
    assert [ds[i]["label"] for i in range(len(ds))] == [s.label for s in data.splits["train"]]
    assert item["image"].min() >= -1.0 - 1e-6 and item["image"].max() <= 1.0 + 1e-6  # normalised by (x-.5)/.5
    ev = ImageDataset(data.splits["val"], eval_transform(Preprocessing(mean, std, 40)))
    assert ev[0]["image"].shape == (3, 40, 40)
    # un-normalised, the eval image has the brightness of the file it came from (no /255 forgotten or doubled)
    with Image.open(data.splits["val"][0].path) as img:
        grey = np.asarray(img.convert("L"), dtype=np.float32) / 255
    assert float((ev[0]["image"] * 0.5 + 0.5).mean()) == pytest.approx(grey.mean(), abs=0.05)
    # eval is deterministic (a second dataset, a second decode), training augmentation is not
    again = ImageDataset(data.splits["val"], eval_transform(Preprocessing(mean, std, 40)))
    assert torch.equal(ev[0]["image"], again[0]["image"])
    draws = [ds[0]["image"] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_info_reports_counts_modes_and_broken_files(tiny_dataset):
    data = load_splits(tiny_dataset)
    data.splits["test"][0].path.write_bytes(b"broken")
    info = dataset_info(data)
    assert info.counts["train"] == {"NonCOVID": 8, "COVID": 8}
    assert set(info.modes["NonCOVID"]) == {"L", "RGB"} and set(info.formats["NonCOVID"]) == {"PNG", "JPEG"}
    assert len(info.unreadable) == 1 and data.splits["test"][0].path.name in info.unreadable[0]
    text = format_info(info, data.class_names)
    assert re.search(r"warning: file format JPEG differs between classes \(NonCOVID \d+%, COVID 0%\)", text)
    assert "colour mode RGBA differs" in text and "unreadable" in text


@pytest.mark.realdata
def test_real_official_split(real_data):
    data = load_splits(real_data)
    totals = {s: len(v) for s, v in data.splits.items()}
    assert totals == {"train": 425, "val": 118, "test": 203}
    assert data.counts()["train"] == {"NonCOVID": 234, "COVID": 191}
    paths = [s.path for v in data.splits.values() for s in v]
    assert len(paths) == len(set(paths)) == 746  # no overlap
    assert all(p.is_file() for p in paths)  # no missing file
    info = dataset_info(data, check_images=False)
    assert not info.overlap


def test_grayscale_and_ct_augmentation(tiny_dataset):
    data = load_splits(tiny_dataset)
    rgb = Image.fromarray(np.dstack([np.full((30, 30), v, np.uint8) for v in (200, 50, 10)]))
    gray = eval_transform(Preprocessing((0.5,) * 3, (0.5,) * 3, 16, grayscale=True))(rgb)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    colour = eval_transform(Preprocessing((0.5,) * 3, (0.5,) * 3, 16))(rgb)
    assert not torch.equal(colour[0], colour[1])
    tf = train_transform(Preprocessing((0.5,) * 3, (0.5,) * 3, 32, 36, grayscale=True), augment="ct")
    x = ImageDataset(data.splits["train"], tf)[0]["image"]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[2])
    with pytest.raises(ValueError, match="augment must be one of"):
        train_transform(Preprocessing(), augment="heavy")


def test_a_seeded_draw_is_augmented_the_same_way_anywhere_and_leaves_the_random_state_alone(tmp_path):
    """SeededDraws' (index, seed) keys: the same augmentation whatever the worker, and torch's own random state
    (dropout, mixup in the main process) untouched."""
    import torch
    from torchvision import transforms as T

    from covidct.data import Sample, SeededDraws

    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        samples.append(Sample(tmp_path / f"{i}.png", i % 2))
    ds = ImageDataset(samples, T.Compose([T.RandomResizedCrop(16), T.ColorJitter(0.5, 0.5), T.ToTensor()]))
    torch.manual_seed(0)
    np.random.seed(0)
    before, np_before = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = ds[(1, 1234)]["image"]
    assert torch.equal(torch.get_rng_state(), before) and np.array_equal(np.random.get_state()[1], np_before)
    torch.manual_seed(99)  # another worker, another random state
    assert torch.equal(ds[(1, 1234)]["image"], a) and not torch.equal(ds[(1, 4321)]["image"], a)
    assert ds[(1, 1234)]["index"] == 1
    draws = SeededDraws(torch.utils.data.SequentialSampler(ds), seed=5)
    epoch1, epoch2 = list(draws), list(draws)
    assert [i for i, _ in epoch1] == [0, 1, 2] and epoch1 != epoch2  # new seeds each epoch
    assert list(SeededDraws(torch.utils.data.SequentialSampler(ds), seed=5)) == epoch1  # and they repeat
    shuffled = SeededDraws(torch.utils.data.RandomSampler(ds, generator=torch.Generator()), seed=5)
    first, second = list(shuffled), list(shuffled)
    resumed = SeededDraws(torch.utils.data.RandomSampler(ds, generator=torch.Generator()), seed=5)
    resumed.set_epoch(1)  # what Lightning does before epoch 2 of a resumed run
    assert list(resumed) == second and first != second  # the order and the seeds of that epoch, from (seed, epoch)


def test_seeded_draws_under_lightnings_ddp_wrapper_follow_the_epoch_it_sets():
    """Under DDP Lightning wraps the sampler in its DistributedSamplerWrapper and calls set_epoch on the wrapper: the
    ranks together must draw exactly that epoch's (index, seed) pairs, so a resumed DDP run repeats an uninterrupted
    one as the single-process resume test shows."""
    import torch
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from covidct.data import SeededDraws

    def draws() -> SeededDraws:
        return SeededDraws(torch.utils.data.RandomSampler(range(8), generator=torch.Generator()), seed=5)

    expected = draws()
    expected.set_epoch(3)
    want = sorted(expected)
    ranks = [DistributedSamplerWrapper(draws(), num_replicas=2, rank=r, shuffle=True, seed=0) for r in range(2)]
    for wrapper in ranks:
        wrapper.set_epoch(3)  # what Lightning does before the 4th epoch, of a resumed run too
    got = [tuple(d) for wrapper in ranks for d in wrapper]
    assert sorted(got) == want and len(got) == 8  # each pair once across the ranks
    fresh = draws()
    assert sorted(fresh) != want  # epoch 0's draws are other ones: the epoch did reach the inner sampler
