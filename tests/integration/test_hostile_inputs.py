"""Careless and hostile inputs through the commands and the API: the two silent wrong-label cases of evaluate
--data-dir refused, a tampered threshold or detector refused by every reader, and serve's refusals by name."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from covidct.cli import main
from covidct.config import InputLimits
from covidct.errors import ModelError
from covidct.inference.load import load_trained
from covidct.inference.serve import create_app
from tests.conftest import synthetic_ct
from tests.medical_files import write_dicom
from tests.upload_files import png_bytes, png_header_claiming


def class_folders(root: Path, names: tuple[str, ...], per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(synthetic_ct(rng, name == "COVID")).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "classes,message",
    [(("COVID",), "holds one class only (COVID)"), (("COVID", "Other"), "cannot be mapped to non-COVID / COVID")],
)
def test_evaluate_data_dir_refuses_folders_whose_labels_it_cannot_tell(own_run, tmp_path, capsys, classes, message):
    folder = class_folders(tmp_path / "site", classes)
    code = main(["evaluate", str(own_run), "--split", "test", "--data-dir", str(folder), "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(folder) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (own_run / "eval-test" / "metrics.json").exists() or "site" not in (own_run / "eval-test").read_text()


def test_evaluate_data_dir_says_when_a_folder_was_split_at_random(own_run, tmp_path, capsys):
    folder = class_folders(tmp_path / "site", ("COVID", "NonCOVID"))
    assert main(["evaluate", str(own_run), "--split", "test", "--data-dir", str(folder), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "has no split folders" in out and "of its 20 images" in out and f"--on {folder}" in out


BAD_RECORDS = {"-1": "-1", "5": "5", "NaN": "NaN", "abc": '"abc"', "missing": None}


def tamper(run: Path, value: str | None) -> None:
    record = json.loads((run / "threshold.json").read_text()) if (run / "threshold.json").is_file() else {}
    record.pop("threshold", None)
    text = json.dumps(record)
    if value is not None:
        text = text[:-1] + (", " if record else "") + f'"threshold": {value}}}'
    (run / "threshold.json").write_text(text)


@pytest.mark.parametrize("exported", [False, True], ids=["run", "run+export"])
@pytest.mark.parametrize("bad", sorted(BAD_RECORDS))
def test_a_tampered_threshold_record_is_refused_by_every_reader(trained_run, tmp_path, capsys, bad, exported):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    image = tmp_path / "x.png"
    Image.fromarray(synthetic_ct(np.random.default_rng(1), False)).save(image)
    if exported:
        assert main(["export", str(run)]) == 0
    tamper(run, BAD_RECORDS[bad])
    commands = {
        "predict": ["predict", str(run), str(image), "--out", str(tmp_path / "p.csv")],
        "evaluate": ["evaluate", str(run), "--split", "test", "--bootstrap", "0"],
        "export": ["export", str(run), "--out", str(tmp_path / "export2")],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, f"{name} accepted threshold {bad}"
        assert len(err) <= 2 and "threshold.json" in err[-1] and "covidct threshold" in err[-1], (name, err)
    with pytest.raises(ModelError, match=r"threshold\.json"):
        load_trained(run, threads=1)  # what serve loads before it starts: it refuses to start
    assert main(["threshold", str(run), "--choose", "0.4"]) == 0  # the fix the message names works
    assert load_trained(run).threshold == 0.4


def test_the_run_threshold_is_used_with_or_without_an_export(trained_run, tmp_path):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    image = tmp_path / "x.png"
    Image.fromarray(synthetic_ct(np.random.default_rng(1), False)).save(image)
    assert not (run / "export").exists()
    (run / "threshold.json").write_text(json.dumps({"threshold": 0.3, "rule": "given", "checkpoint": "best.ckpt"}))
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p.csv")]) == 0
    assert float(next(csv.DictReader((tmp_path / "p.csv").open()))["threshold"]) == 0.3


def test_a_detector_with_a_nan_threshold_is_refused(trained_run, tmp_path, capsys):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    card_path = run / "ood" / "ood.json"
    if not card_path.is_file():
        assert main(["ood", "fit", str(run)]) == 0
    text = card_path.read_text()
    card = json.loads(text)
    card["threshold"] = float("nan")
    card_path.write_text(json.dumps(card))
    image = tmp_path / "x.png"
    Image.fromarray(synthetic_ct(np.random.default_rng(1), False)).save(image)
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "ood.json" in err and "threshold is not a finite number" in err and "covidct ood fit" in err


@pytest.fixture(scope="module")
def model(exported_model):
    return load_trained(exported_model)


@pytest.fixture(scope="module")
def client(model):
    return TestClient(create_app(model))


def test_serve_refuses_each_bad_upload_by_name(client, tmp_path):
    ct = png_bytes(synthetic_ct(np.random.default_rng(5), True, (64, 48)))
    r = client.post("/api/v1/predict", files=[("file", ("a.png", ct)), ("file", ("b.png", ct))])
    assert r.status_code == 422 and "2 files in one request" in r.json()["detail"]
    r = client.post("/api/v1/predict", files={"file": ("dot.png", png_bytes(np.zeros((1, 1), np.uint8)))})
    assert r.status_code == 422 and "under the minimum of 32 pixels a side (min_side)" in r.json()["detail"]
    r = client.post("/api/v1/predict", files={"file": ("huge.png", png_header_claiming(20_000, 20_000))})
    detail = r.json()["detail"]
    assert r.status_code == 422 and "over the limit of 50,000,000 pixels" in detail and "truncated" not in detail
    empty = write_dicom(tmp_path / "e.dcm", np.zeros((40, 40), np.float32), pixels=False).read_bytes()
    r = client.post("/api/v1/predict", files={"file": ("e.dcm", empty)})
    assert r.status_code == 422 and r.json()["detail"].count("e.dcm") == 1  # the name once, not twice
    assert client.get("/health").status_code == 200


def test_serve_refuses_a_body_over_the_limit_before_reading_it(model):
    small = TestClient(create_app(model, limits=InputLimits(upload_mb=0.01, archive_mb=0.02)))
    ct = png_bytes(synthetic_ct(np.random.default_rng(5), True, (64, 48)))
    r = small.post("/api/v1/predict", files={"file": ("big.png", ct + bytes(200_000))})
    assert r.status_code == 413 and "over the limit of 0.02 MB for a ZIP (archive_mb)" in r.json()["detail"]
    r = small.post("/api/v1/predict", files={"file": ("mid.png", ct + bytes(15_000))})  # in the body, over an image's
    assert r.status_code == 413 and "mid.png" in r.json()["detail"] and "(upload_mb)" in r.json()["detail"]
    boundary = "covidctboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\n\r\n'.encode()

    def chunks():  # no Content-Length: refused as it streams in (TestClient sends it all; the abuse test does not)
        yield head
        for _ in range(80):
            yield bytes(64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = small.post(
        "/api/v1/predict", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413 and "(archive_mb)" in r.json()["detail"]


def test_a_dicom_without_its_suffix_comes_back_with_its_picture(client, tmp_path):
    hu = synthetic_ct(np.random.default_rng(1), True).astype(np.float32) * 6 - 1350
    data = write_dicom(tmp_path / "s.dcm", hu).read_bytes()
    body = client.post("/api/v1/predict?cam=true", files={"file": ("IM0001", data)}).json()
    assert body["preview"].startswith("data:image/png;base64,") and body["preview"] != body["cam"]
    import base64

    with Image.open(io.BytesIO(base64.b64decode(body["preview"].split(",", 1)[1]))) as preview:
        grey = np.clip((hu + 1350) / 1500 * 255, 0, 255).round().astype(np.uint8)
        assert np.abs(np.asarray(preview.convert("L")).astype(int) - grey).max() <= 1  # the slice, no heat map
    png = client.post("/api/v1/predict", files={"file": ("x.png", png_bytes(grey))}).json()
    assert png["preview"] is None  # the browser shows a PNG itself


def test_docs_work_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text and "/api/v1/predict" in page.text
    assert "http://" not in page.text and "https://" not in page.text


@pytest.mark.parametrize("missing", ["pixels", "acquisitions"])
def test_a_detector_of_an_older_covidct_is_refused_with_how_to_refit(trained_run, tmp_path, capsys, missing):
    """No branch scores with an older detector's fewer checks: it is refused by name, and the fix works."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    card_path = run / "ood" / "ood.json"
    if not card_path.is_file():
        assert main(["ood", "fit", str(run)]) == 0
    card = json.loads(card_path.read_text())
    card.pop(missing)
    card_path.write_text(json.dumps(card))
    image = tmp_path / "x.png"
    Image.fromarray(synthetic_ct(np.random.default_rng(1), False)).save(image)
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "older covidct" in err and missing in err and "covidct ood fit" in err
    assert main(["ood", "fit", str(run)]) == 0
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p.csv")]) == 0


def test_predict_refuses_a_folder_of_links_that_fan_out_by_name(trained_run, tmp_path, capsys):
    from tests.data.test_outside_part_three import link_fan_out

    top = link_fan_out(tmp_path, depth=12)  # 2**12 paths to one image: listed whole, they would be scored 4,096 times
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained_run), str(top), "--max-folder-entries", "1000", "--out", str(out)]) == 2
    said = capsys.readouterr().err
    assert f"{top}: more than 1,000 files and folders" in said and "--max-folder-entries" in said
    assert not out.exists()
