"""Fixtures: tiny synthetic datasets in the official COVID-CT layout, made fresh for each test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("COVIDCT_NO_PROGRESS", "1")
os.environ.setdefault("COVIDCT_ALLOW_PARTIAL_SOURCES", "1")  # tiny stand-ins of the known sources
# No test reaches the Hugging Face Hub (the code that downloads is tested against local servers); without this, a
# timm lookup on a machine without network waits about 50 s for DNS before it fails (the ImageNet-only baseline of
# the adaptation curve made its test take 94 s).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "covid-ct"
REAL_DATA = Path(os.environ.get("COVIDCT_REAL_DATA", REAL_DATA)).resolve()


def synthetic_ct(rng: np.random.Generator, covid: bool, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """A dark disc (the 'body') with two lungs; COVID images get bright blobs (ground-glass stand-ins)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w), 20.0)
    img[((xx - w / 2) / (w * 0.45)) ** 2 + ((yy - h / 2) / (h * 0.45)) ** 2 < 1] = 120
    for cx in (w * 0.32, w * 0.68):
        img[((xx - cx) / (w * 0.13)) ** 2 + ((yy - h / 2) / (h * 0.3)) ** 2 < 1] = 40
    if covid:
        for _ in range(3):
            cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.3 * h, 0.7 * h)
            img[((xx - cx) ** 2 + (yy - cy) ** 2) < (0.08 * w) ** 2] = 220
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def starting_weights(path: Path) -> Path:
    """A weight file of a seeded timm resnet10t: a "pretrained" start (--weights) that gets an ImageNet probe."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(3)
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet10t").state_dict().items()}, str(path))
    return path


def make_covidct_layout(root: Path, counts: dict[str, dict[str, int]], seed: int = 0) -> Path:
    """Write a dataset in the official layout.

    Images-processed/CT_<class>/ and Data-split/<class>/<split>CT_<class>.txt.

    Non-COVID images alternate between PNG (L) and JPEG (RGB) and COVID ones between PNG RGB and RGBA,
    as in the real data, so every conversion path is exercised."""
    rng = np.random.default_rng(seed)
    for class_name in ("COVID", "NonCOVID"):
        image_dir = root / "Images-processed" / f"CT_{class_name}"
        image_dir.mkdir(parents=True, exist_ok=True)
        split_dir = root / "Data-split" / class_name
        split_dir.mkdir(parents=True, exist_ok=True)
        i = 0
        for split, per_class in counts.items():
            names = []
            for _ in range(per_class[class_name]):
                arr = synthetic_ct(rng, covid=class_name == "COVID")
                if class_name == "COVID":
                    name = f"covid_{i}.png"
                    img = Image.fromarray(arr).convert("RGBA" if i % 2 else "RGB")
                else:
                    name = f"noncovid_{i}." + ("jpg" if i % 2 else "png")
                    img = Image.fromarray(arr).convert("RGB" if i % 2 else "L")
                img.save(image_dir / name)
                names.append(name)
                i += 1
            (split_dir / f"{split}CT_{class_name}.txt").write_text("\n".join(names) + "\n")
    return root


TINY_COUNTS = {
    "train": {"COVID": 8, "NonCOVID": 8},
    "val": {"COVID": 4, "NonCOVID": 4},
    "test": {"COVID": 4, "NonCOVID": 4},
}


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_covidct_layout(tmp_path / "covid-ct", TINY_COUNTS)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny training run (timm resnet10t from scratch, 2 epochs) shared by the evaluation tests."""
    from covidct.config import TrainConfig
    from covidct.training.fit import train

    root = tmp_path_factory.mktemp("session")
    data = make_covidct_layout(root / "covid-ct", TINY_COUNTS)
    config = TrainConfig(
        model="timm:resnet10t",
        data_dir=str(data),
        pretrained=False,
        epochs=2,
        batch_size=8,
        lr=1e-3,
        patience=5,
        num_workers=0,
        out=str(root / "runs"),
        precision="32",  # the same run on every CPU: "auto" would be bf16 here and fp32 on CPUs without fast bf16
        monitor="val_acc",  # the evaluation tests count on the threshold 0.5 and the best epoch by accuracy
        operating_point="0.5",
    )
    return train(config, progress=False)


@pytest.fixture
def own_run(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session's run, for tests that write into a run folder (evaluations, reports,
    thresholds): the shared one stays as training left it, whatever order the tests run in."""
    import shutil

    return Path(shutil.copytree(trained_run, tmp_path / trained_run.name))


def perturbed_copy(run: Path, dest: Path, scale: float = 0.5, seed: int = 0) -> Path:
    """A copy of `run` whose classifier head got noise: a second model with different scores on the same images."""
    import shutil

    import torch

    out = Path(shutil.copytree(run, dest))
    ckpt_path = out / "checkpoints" / "best.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    g = torch.Generator().manual_seed(seed)
    head = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point()][-2:]  # last weight and bias
    for k in head:  # noise of the weights' own size, and a bias shift: scores move by more than rounding
        v = ckpt["state_dict"][k]
        ckpt["state_dict"][k] = v + scale * (v.abs().mean() + 0.5) * torch.randn(v.shape, generator=g)
    torch.save(ckpt, ckpt_path)
    restamp(out)
    return out


def restamp(run: Path) -> None:
    """After a test changed a run's weights: its graph (made from the old ones) removed, and its detector stamped
    with the new fingerprint, standing in for one fitted anew (the loader refuses a folder whose files disagree)."""
    import json

    from covidct.inference.load import load_checkpoint, weights_fingerprint
    from covidct.runs import RunDir

    folder = RunDir(run)
    folder.scorer_graph_path.unlink(missing_ok=True)
    card = run / "ood" / "ood.json"
    if card.is_file():
        record = json.loads(card.read_text())
        record["weights_sha256"] = weights_fingerprint(load_checkpoint(folder.checkpoint("best"), folder))
        card.write_text(json.dumps(record))


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "Images-processed").is_dir():
        pytest.skip(f"COVID-CT dataset not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium (driven by Playwright): skipped when missing, except under CI=true where it must exist."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (make test installs Debian's chromium when run as root)")
        pytest.skip("chromium not installed")
    return path


@pytest.fixture(scope="session")
def exported_model(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny run exported as safetensors + model.json."""
    from covidct.inference.export import export_run

    out = tmp_path_factory.mktemp("export")
    export_run(trained_run, "safetensors", out)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ trains a model or starts a server: the slow tier (`make test` and CI
    run it; `pytest -m "not slow"` is the quick tier for everyday work)."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.slow)


def make_sars_layout(root: Path, n_covid: int = 12, n_non: int = 12, seed: int = 1, size=(40, 36)) -> Path:
    """A tiny stand-in for the SARS-CoV-2 CT-scan set: COVID/ and nonCOVID/ of grey PNGs (tight crops)."""
    rng = np.random.default_rng(seed)
    for folder, n, covid in (("COVID", n_covid, True), ("nonCOVID", n_non, False)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"Covid ({i + 1}).png" if covid else f"Non-Covid ({i + 1}).png"
            Image.fromarray(synthetic_ct(rng, covid, size)).save(root / folder / name)
    return root


def whole_slice(lungs: bool = True, size: int = 256) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A scanner-like whole slice in a lung window: air around a body ellipse lying on a table, two dark lungs
    inside it. Returns the image and the lungs' true box (top, bottom, left, right)."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size), 5.0)
    body = ((xx - size * 0.5) / (size * 0.36)) ** 2 + ((yy - size * 0.48) / (size * 0.27)) ** 2 < 1
    img[body] = 230
    img[int(size * 0.8) : int(size * 0.83), int(size * 0.05) : int(size * 0.95)] = 200  # the table
    box = (size, 0, size, 0)
    if lungs:
        both = np.zeros_like(body)
        for cx in (size * 0.36, size * 0.64):
            both |= ((xx - cx) / (size * 0.1)) ** 2 + ((yy - size * 0.47) / (size * 0.17)) ** 2 < 1
        img[both] = 70
        rows, cols = np.flatnonzero(both.any(1)), np.flatnonzero(both.any(0))
        box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    img += np.random.default_rng(0).normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), box
