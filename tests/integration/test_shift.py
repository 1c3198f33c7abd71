"""The batch shift test where a batch exists: `covidct predict` on a folder and `covidct evaluate --on` write the
same record, and say it in one line; a model whose detector has no reference says why it was not run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from covidct.cli import main
from covidct.inference.load import load_trained
from covidct.ood.image_statistics import IMAGE_STATISTICS
from covidct.ood.shift import ShiftReference, statistics_matrix
from covidct.ood.storage import load_detector, save_detector
from tests.conftest import synthetic_ct


def with_reference(run: Path, data: Path) -> Path:
    """The tiny run's detector given a reference of its 24 train and validation images (it has 8 validation
    images: too few for one of its own)."""
    model = load_trained(run)
    images = sorted((data / "Images-processed").rglob("*.*"))
    if not images:
        raise AssertionError("the session's tiny dataset is not beside its run")
    pictures = [Image.open(p).convert("RGB") for p in images[:24]]
    with model.collecting() as outputs:
        model.score_images(pictures)
    features = np.concatenate([f for f, _ in outputs])
    statistics = np.concatenate([statistics_matrix(s) for _, s in outputs])
    detector = load_detector(run / "ood")
    detector.reference = ShiftReference.fit(features, statistics, features, {"images": "test"})
    save_detector(detector, run / "ood")
    assert set(IMAGE_STATISTICS) <= set(outputs[0][1])
    return run


def folder_of(path: Path, n: int, noise: bool) -> Path:
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        array = rng.integers(0, 255, (64, 64), dtype=np.uint8) if noise else synthetic_ct(rng, i % 2 == 0)
        Image.fromarray(array).save(path / f"{i}.png")
    return path


def test_predict_and_evaluate_write_one_shift_record(trained_run, tmp_path, capsys):
    data = trained_run.parent.parent / "covid-ct"  # conftest's session: the tiny data set beside its runs folder
    run = with_reference(Path(shutil.copytree(trained_run, tmp_path / "run")), data)
    noise = folder_of(tmp_path / "noise", 20, noise=True)
    assert main(["predict", str(run), str(noise), "--out", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "p.json").read_text())["shift"]
    assert (
        record["tested"]
        and record["n"] == 20
        and set(record["tests"]) == {"features_mmd", "statistics_mmd", "classifier"}
    )
    assert record["shifted"] and "SHIFT: this batch of 20 images differs" in out and "covidct adapt" in out

    few = folder_of(tmp_path / "few", 5, noise=False)
    assert main(["predict", str(run), str(few), "--out", str(tmp_path / "q.csv")]) == 0
    assert "shift test not run: a batch of 5 images" in capsys.readouterr().out

    site = tmp_path / "site"
    for name, is_noise in (("COVID", True), ("NonCOVID", True)):
        shutil.copytree(folder_of(tmp_path / f"src-{name}", 10, is_noise), site / name)
    assert main(["evaluate", str(run), "--on", f"site={site}", "--bootstrap", "0"]) == 0
    assert "on site=" in capsys.readouterr().out
    metrics = json.loads((run / "eval-site" / "metrics.json").read_text())
    assert metrics["shift"]["tested"] and metrics["shift"]["n"] == 20 and metrics["shift"]["shifted"]


def test_without_a_reference_predict_says_why(trained_run, tmp_path, capsys):
    images = folder_of(tmp_path / "imgs", 12, noise=False)
    assert main(["predict", str(trained_run), str(images), "--out", str(tmp_path / "p.csv")]) == 0
    assert "shift test not run: this model's detector has no shift reference" in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())["shift"]["tested"] is False


def test_serve_tests_its_recent_traffic_as_a_batch(trained_run, tmp_path):
    import io

    from fastapi.testclient import TestClient

    from covidct.inference.serve import create_app

    data = trained_run.parent.parent / "covid-ct"
    run = with_reference(Path(shutil.copytree(trained_run, tmp_path / "run")), data)
    client = TestClient(create_app(load_trained(run), shift_window=12))
    assert client.get("/api/v1/shift").json()["tested"] is False  # nothing scored yet
    rng = np.random.default_rng(1)
    for i in range(15):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
        assert client.post("/api/v1/predict", files={"file": (f"{i}.png", buf.getvalue())}).status_code == 200
    record = client.get("/api/v1/shift").json()
    assert record["tested"] and record["n"] == 12 and record["window"] == 12  # the last 12 only
    assert record["shifted"] and record["p_value"] < 0.05


def test_predict_tests_each_study_and_the_whole_run(trained_run, tmp_path):
    """A folder of two DICOM studies: each study's record holds its own slices, the run's holds them all."""
    from covidct.inference.predict import predict_inputs
    from tests.medical_files import chest_hu, write_dicom

    data = trained_run.parent.parent / "covid-ct"
    run = with_reference(Path(shutil.copytree(trained_run, tmp_path / "run")), data)
    folder = tmp_path / "pacs"
    for study, slices in (("1.2.3.1", 12), ("1.2.3.2", 6)):
        for k in range(slices):
            path = folder / study / f"{k}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_dicom(path, chest_hu(64, seed=k), z=float(k), study=study, series=f"{study}.1", instance=k + 1)
    report: dict = {}
    predict_inputs(load_trained(run), [folder], report=report)
    records = {s["study_uid"]: s["shift"] for s in report["studies"]}
    assert records["1.2.3.1"]["tested"] and records["1.2.3.1"]["n"] == 12
    assert records["1.2.3.2"]["tested"] is False and records["1.2.3.2"]["n"] == 6  # under the smallest batch
    assert report["shift"]["tested"] and report["shift"]["n"] == 18


def test_each_api_key_has_its_own_window(trained_run, tmp_path):
    """Two sites on one server: one sends noise, the other nothing yet; each reads its own traffic's test."""
    import io

    from fastapi.testclient import TestClient

    from covidct.inference.serve import create_app

    data = trained_run.parent.parent / "covid-ct"
    run = with_reference(Path(shutil.copytree(trained_run, tmp_path / "run")), data)
    client = TestClient(create_app(load_trained(run), api_key=["site-a", "site-b"], shift_window=12))
    rng = np.random.default_rng(2)
    for i in range(12):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
        answer = client.post(
            "/api/v1/predict", files={"file": (f"{i}.png", buf.getvalue())}, headers={"X-API-Key": "site-a"}
        )
        assert answer.status_code == 200
    a = client.get("/api/v1/shift", headers={"X-API-Key": "site-a"}).json()
    b = client.get("/api/v1/shift", headers={"X-API-Key": "site-b"}).json()
    assert a["client"] == "key 1" and a["tested"] and a["n"] == 12 and a["shifted"]
    assert b["client"] == "key 2" and not b["tested"] and b["n"] == 0
    assert client.get("/api/v1/shift", headers={"X-API-Key": "site-c"}).status_code == 401
