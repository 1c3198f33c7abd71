import numpy as np

from covidct.data.audit.shortcut import ShortcutFeatures, grey_histogram, shortcut_auc, shortcut_aucs, transfer_auc


def features(fmt: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    grey = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return ShortcutFeatures(size, size, fmt, "L", int(rng.integers(3000, 5000)), grey_histogram(grey)).vector()


def test_probe_finds_a_format_shortcut_and_not_a_random_label():
    rng = np.random.default_rng(0)
    x = np.stack([features("JPEG" if i % 2 else "PNG", rng) for i in range(80)])
    y = np.arange(80) % 2
    assert shortcut_auc(x, y) > 0.95  # the label is the file format
    shuffled = rng.permutation(y)
    assert 0.25 < shortcut_auc(x, shuffled) < 0.75  # nothing to find


def test_probe_per_source_and_for_the_source():
    rng = np.random.default_rng(1)
    feats, labels, sources = [], [], []
    for i in range(60):
        src = "a" if i < 30 else "b"
        feats.append(features("PNG" if src == "a" else "JPEG", rng))
        labels.append(i % 2)
        sources.append(src)
    out = shortcut_aucs(feats, labels, sources)
    assert set(out) == {
        "class within a",
        "class within b",
        "class (all sources pooled)",
        "source",
        "class within a, metadata only",
        "class within b, metadata only",
        "class, trained on a, scored on b",
        "class, trained on b, scored on a",
    }
    assert out["source"] > 0.95 and out["class within a"] < 0.8


def test_transfer_probe_sees_a_cue_that_flips_between_sources():
    """Within each source the class is the brightness; where b has it the other way round, the probe trained on a
    scores b below chance; where b shares the cue, it transfers."""
    rng = np.random.default_rng(2)
    y = np.tile([0, 1], 40)
    a = np.c_[rng.normal(size=80) + 2.0 * y, rng.normal(size=80)]
    b = np.c_[rng.normal(size=80) + 2.0 * y, rng.normal(size=80)]
    assert transfer_auc(a, y, b, 1 - y) < 0.2  # in b the brighter images are the other class
    assert transfer_auc(a, y, b, y) > 0.8
    assert transfer_auc(a, np.zeros(80), b, y) is None


def test_probe_needs_enough_images_per_value():
    x = np.zeros((6, 3))
    assert shortcut_auc(x, np.array([0, 0, 0, 0, 1, 1])) is None


def test_histogram_sums_to_one():
    h = grey_histogram(np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert h.shape == (32,) and np.isclose(h.sum(), 1) and np.allclose(h, 1 / 32)


def test_view_statistics_read_the_file_and_what_the_model_sees(tmp_path):
    import numpy as np
    from PIL import Image

    from covidct.data.audit.shortcut import VIEW_STATISTICS, view_statistics, view_statistics_table

    pixels = np.zeros((40, 100), dtype=np.uint8)
    pixels[:, 50:] = 200  # left half dark, right half bright
    path = tmp_path / "half.png"
    Image.fromarray(pixels).save(path)
    whole = view_statistics(path)
    assert (whole["width"], whole["height"]) == (100.0, 40.0) and whole["file_kb"] == path.stat().st_size / 1024
    assert whole["dark_share"] == 0.5 and whole["mean_grey"] == 100.0 and whole["grey_std"] == 100.0
    bright = view_statistics(path, view=lambda img: img.crop((50, 0, 100, 40)))  # the model's crop
    assert (bright["width"], bright["height"]) == (100.0, 40.0)  # the file's size, whatever the crop
    assert bright["dark_share"] == 0.0 and bright["mean_grey"] == 200.0
    table = view_statistics_table([str(path), str(path)])
    assert tuple(table) == VIEW_STATISTICS and table["dark_share"].tolist() == [0.5, 0.5]
