"""The data audit on a small dataset of distinct random images with planted duplicates and problems."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from covidct.cli import main
from covidct.data.audit.report import audit_dataset, near_duplicate_pairs, write_audit
from covidct.data.datasets import load_splits


def _random_image(rng: np.random.Generator, size=(96, 80)) -> Image.Image:
    """A smooth random pattern: unrelated images do not look alike."""
    noise = rng.integers(0, 256, (size[1] // 8, size[0] // 8), dtype=np.uint8)
    return Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1))


def _layout(root: Path, n: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for cls in ("COVID", "NonCOVID"):
        (root / "Images-processed" / f"CT_{cls}").mkdir(parents=True)
        (root / "Data-split" / cls).mkdir(parents=True)
        for split in ("train", "val", "test"):
            names = []
            for i in range(n):
                name = f"{cls}_{split}_{i}.png"
                _random_image(rng).save(root / "Images-processed" / f"CT_{cls}" / name)
                names.append(name)
            (root / "Data-split" / cls / f"{split}CT_{cls}.txt").write_text("\n".join(names) + "\n")
    return root


def _add(root: Path, cls: str, split: str, name: str, img: Image.Image | bytes) -> None:
    path = root / "Images-processed" / f"CT_{cls}" / name
    if isinstance(img, bytes):
        path.write_bytes(img)
    else:
        img.save(path)
    split_file = root / "Data-split" / cls / f"{split}CT_{cls}.txt"
    split_file.write_text(split_file.read_text() + name + "\n")


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    root = _layout(tmp_path / "d")
    img_dir = root / "Images-processed"
    # an exact copy of a train COVID image, filed as a test non-COVID image (leak + label conflict)
    _add(root, "NonCOVID", "test", "copy.png", (img_dir / "CT_COVID" / "COVID_train_0.png").read_bytes())
    # a near-duplicate: a val image, brighter, re-saved as JPEG, filed in test
    src = Image.open(img_dir / "CT_NonCOVID" / "NonCOVID_val_1.png").convert("L")
    near = Image.fromarray(np.clip(np.asarray(src, float) * 1.1 + 5, 0, 255).astype(np.uint8))
    near.save(tmp_path / "near.jpg", quality=90)
    _add(root, "NonCOVID", "test", "near.jpg", (tmp_path / "near.jpg").read_bytes())
    # resized (larger) and slightly cropped (2 px off each side of 96x80) copies of two other images
    big = Image.open(img_dir / "CT_COVID" / "COVID_val_2.png").resize((160, 133), Image.Resampling.BICUBIC)
    _add(root, "COVID", "test", "resized.png", big)
    crop = Image.open(img_dir / "CT_NonCOVID" / "NonCOVID_train_3.png").crop((2, 2, 94, 78))
    _add(root, "NonCOVID", "val", "cropped.png", crop)
    _add(root, "COVID", "train", "tiny.png", Image.new("L", (40, 30), 128))
    _add(root, "COVID", "train", "strip.png", _random_image(np.random.default_rng(9), (300, 60)))
    _add(root, "COVID", "val", "broken.png", b"\x89PNG not really")
    return root


def test_audit_finds_planted_duplicates_and_problems(planted):
    report = audit_dataset(load_splits(planted))
    names = lambda p: {Path(p["a"]).name, Path(p["b"]).name}  # noqa: E731
    assert [names(p) for p in report.exact_duplicates] == [{"COVID_train_0.png", "copy.png"}]
    exact = report.exact_duplicates[0]
    assert exact["cross_split"] and exact["label_conflict"]
    near = [names(p) for p in report.near_duplicates]
    assert {"NonCOVID_val_1.png", "near.jpg"} in near  # re-encoded as JPEG (and brighter)
    assert {"COVID_val_2.png", "resized.png"} in near
    assert {"NonCOVID_train_3.png", "cropped.png"} in near
    assert len(near) == 3, near  # unrelated random images are not flagged
    problems = {Path(p["path"]).name: p["problem"] for p in report.problems}
    assert problems["tiny.png"].startswith("tiny: 40x30")
    assert problems["strip.png"].startswith("extreme aspect ratio: 300x60")
    assert problems["broken.png"].startswith("unreadable")
    s = report.summary()
    assert s["exact_duplicate_pairs"] == 1 and s["pairs_with_conflicting_labels"] >= 1


def test_audit_outputs_and_cli(planted, tmp_path, capsys):
    assert main(["data", "audit", "--data-dir", str(planted), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "exact duplicate pairs: 1" in out
    saved = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert saved["summary"]["exact_duplicate_pairs"] == 1 and saved["rule"]["phash_max_distance"] == 8
    md = (tmp_path / "a" / "audit.md").read_text()
    assert "copy.png" in md and "near.jpg" in md and "tiny: 40x30" in md
    csv_text = (tmp_path / "a" / "near_duplicates.csv").read_text()
    assert csv_text.count("\n") == 1 + len(saved["exact_duplicates"]) + len(saved["near_duplicates"])
    sheet = Image.open(tmp_path / "a" / "near_duplicates.png")
    assert sheet.size[1] > 200 and np.asarray(sheet.convert("L")).std() > 10


def test_pair_search_blocks_agree():
    from covidct.data.audit.report import ImageRecord

    rng = np.random.default_rng(1)
    base = rng.normal(size=1024).astype(np.float32)
    recs = [
        ImageRecord(
            "train",
            0,
            Path(f"{i}.png"),
            str(i),
            int(rng.integers(0, 2**63)),
            base + rng.normal(0, s, 1024).astype(np.float32),
            (1, 1),
            "L",
            "PNG",
        )
        for i, s in enumerate([0.01, 0.02, 5, 5, 5])
    ]
    for r in recs:
        r.thumb = (r.thumb - r.thumb.mean()) / r.thumb.std()
    small, big = near_duplicate_pairs(recs, block=2), near_duplicate_pairs(recs, block=512)
    assert [p[:3] for p in small] == [p[:3] for p in big]
    assert [p[3] for p in small] == pytest.approx([p[3] for p in big], abs=1e-5)
    assert [(i, j) for i, j, _, _ in near_duplicate_pairs(recs)] == [(0, 1)]


@pytest.mark.realdata
def test_real_cross_split_conflicts_found(real_data, tmp_path):
    report = audit_dataset(load_splits(real_data))
    cross = {frozenset((Path(p["a"]).name, Path(p["b"]).name)) for p in report.near_duplicates if p["cross_split"]}
    assert frozenset(("71%0.jpg", "kjr-21-e24-p5-29.png")) in cross
    write_audit(report, tmp_path)
    assert (tmp_path / "audit.md").read_text().count("kjr-21-e24-p5-29.png") >= 1


def test_api_audit_writes_and_returns_the_report(planted, tmp_path):
    import covidct.api as cct

    report = cct.audit(planted, out=tmp_path / "a")
    assert report.summary()["exact_duplicate_pairs"] == 1
    saved = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(report.summary()))
