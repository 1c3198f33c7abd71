"""The out-of-distribution check as the program runs it: fitted at the end of training, the same score from every
model form, shown by predict, evaluate and the API, and refusing what does not belong to the model."""

import csv
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from covidct.cli import main
from covidct.data import ImageDataset, load_rgb
from covidct.errors import ModelError
from covidct.inference.load import load_trained
from covidct.ood.fit import dataset_outputs
from covidct.ood.framing import framing_of
from covidct.ood.pixels import pixels_of
from covidct.runs import RunDir


def noise_images(n: int = 6, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def framed(images: list[Image.Image]) -> list[Image.Image]:
    """Each image pasted into a large black square: the framing of a whole scanner slice around a lung crop."""
    return [Image.fromarray(np.pad(np.asarray(im.convert("L")), 100)).convert("RGB") for im in images]


def test_training_fits_a_detector_with_its_threshold_on_validation(trained_run):
    run = RunDir(trained_run)
    card = json.loads((run.ood_dir / "ood.json").read_text())
    model = load_trained(trained_run)
    assert model.ood is not None and card["architecture"] == model.architecture == "timm:resnet10t"
    val = ImageDataset(run.data().splits["val"], model.transform)
    features = dataset_outputs(model.scoring().network, val)[1]  # the network that scores and fits
    images = [val.image(i) for i in range(len(val))]
    scores = model.ood.score(features, framing_of(images), pixels_of(images))
    assert card["threshold"] == pytest.approx(np.percentile(scores, card["percentile"]), rel=1e-6)
    assert card["framing"]["statistics"] == ["log_aspect", "dark_rows", "dark_columns"]
    assert card["pixels"]["statistics"][-2:] == ["noise", "texture"]
    with pytest.raises(ModelError, match="framing statistics"):  # the framing half cannot be skipped by mistake
        model.ood.score(features)
    assert card["n_train"] == len(run.data().splits["train"]) and card["threshold_on"] == "val"


def test_unlike_images_are_flagged_and_the_training_images_mostly_not(trained_run):
    model = load_trained(trained_run)
    own = [load_rgb(s.path) for s in RunDir(trained_run).data().splits["train"]]
    _, own_ood = model.score_images(own)
    _, noise_ood = model.score_images(noise_images())
    _, framed_ood = model.score_images(framed(own[:6]))
    assert model.ood_flags(own_ood).mean() <= 0.25
    assert model.ood_flags(noise_ood).all() and model.ood_flags(framed_ood).all()


def test_every_model_form_gives_the_checkpoints_ood_score(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    images = [load_rgb(s.path) for s in RunDir(run).data().splits["test"]] + noise_images(2)
    want_scores, want = load_trained(run).score_images(images)
    assert main(["export", str(run), "--out", str(tmp_path / "st")]) == 0
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "ox")]) == 0
    forms = {"safetensors": tmp_path / "st", "onnx": tmp_path / "ox", "onnx file": tmp_path / "ox" / "model.onnx"}
    for name, path in forms.items():
        model = load_trained(path)
        scores, got = model.score_images(images)
        assert got is not None, name
        np.testing.assert_allclose(scores, want_scores, atol=1e-4, err_msg=name)
        # ONNX Runtime's float32 kernels differ from PyTorch's in the last bits; the distance amplifies them a little
        np.testing.assert_allclose(got, want, rtol=1e-4 if name == "safetensors" else 2e-3, err_msg=name)
        assert (model.ood_flags(got) == load_trained(run).ood_flags(want)).mean() >= 0.9, name


def test_predict_shows_the_flag_and_warns(trained_run, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, img in enumerate(noise_images(3)):
        img.save(folder / f"noise{i}.png")
    assert main(["predict", str(trained_run), str(folder), "--out", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["in_distribution"] for r in rows] == ["0"] * 3 and all(float(r["ood_score"]) > 0 for r in rows)
    assert "WARNING: 3 of 3 images/slices" in out and "[OUT OF DISTRIBUTION]" in out
    report = json.loads((tmp_path / "p.json").read_text())
    assert all(i["in_distribution"] is False for i in report["images"]) and "counted slices" in report["ood_check"]


def test_a_run_without_a_detector_predicts_as_before_and_says_how_to_add_one(trained_run, tmp_path, capsys):
    run = tmp_path / "old-run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "ood")  # as trained before detectors existed
    image = tmp_path / "x.png"
    noise_images(1)[0].save(image)
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    assert "check unavailable" in out and "covidct ood fit" in out
    row = next(csv.DictReader((tmp_path / "p.csv").open()))
    assert row["in_distribution"] == "" and row["score"] != ""
    assert main(["ood", "fit", str(run)]) == 0
    assert load_trained(run).ood is not None


def test_exporting_a_run_without_a_detector_fits_one_and_says_it_changed_the_run(trained_run, tmp_path, caplog):
    run = tmp_path / "old-run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "ood")  # as trained before detectors existed
    out = tmp_path / "export"
    with caplog.at_level("WARNING", logger="covidct"):
        assert main(["export", str(run), "--format", "safetensors", "--out", str(out)]) == 0
    said = [r.getMessage() for r in caplog.records if "had no out-of-distribution detector" in r.getMessage()]
    assert len(said) == 1 and str(RunDir(run).ood_dir) in said[0]
    assert (run / "ood" / "ood.json").is_file() and (out / "ood.json").is_file()


def test_a_detector_of_another_model_is_refused_and_nothing_is_touched(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    card_path = run / "ood" / "ood.json"
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "architecture": "efficientnet_lite0"}))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ModelError, match="fitted for efficientnet_lite0"):
        load_trained(run)
    image = tmp_path / "x.png"
    noise_images(1)[0].save(image)
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p.csv")]) == 2
    assert "covidct: error:" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_evaluate_on_a_set_splits_the_metrics_by_the_flag(trained_run, tmp_path):
    from tests.conftest import make_sars_layout

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    site = make_sars_layout(tmp_path / "site", 6, 6, seed=4, size=(200, 180))  # larger images than training's
    assert main(["evaluate", str(run), "--on", f"site={site}", "--bootstrap", "0"]) == 0
    metrics = json.loads((run / "eval-site" / "metrics.json").read_text())
    rows = list(csv.DictReader((run / "eval-site" / "predictions.csv").open()))
    flagged = [r for r in rows if r["in_distribution"] == "0"]
    ood = metrics["ood"]
    assert ood["n_flagged"] == len(flagged) and ood["fraction_flagged"] == pytest.approx(len(flagged) / len(rows))
    parts = [m["n"] for m in (ood["in_distribution"], ood["flagged"]) if m]
    assert sum(parts) == metrics["n"]
    if ood["flagged"]:
        y = [int(r["label"]) for r in flagged]
        assert ood["flagged"]["tp"] + ood["flagged"]["fn"] == sum(y)


def test_the_api_answers_the_flag(trained_run):
    import io

    client = TestClient(
        __import__("covidct.inference.serve", fromlist=["create_app"]).create_app(load_trained(trained_run))
    )
    buf = io.BytesIO()
    noise_images(1)[0].save(buf, format="PNG")
    body = client.post("/api/v1/predict", files={"file": ("n.png", buf.getvalue(), "image/png")}).json()
    assert body["in_distribution"] is False and body["ood_score"] > body["ood_threshold"]
    assert "in_distribution" in client.get("/openapi.json").text


def test_the_check_is_the_same_when_threads_share_the_model(trained_run):
    """The server scores requests in parallel threads on one model: each thread's features are its own pass's."""
    from concurrent.futures import ThreadPoolExecutor

    model = load_trained(trained_run)
    batches = [
        noise_images(3, seed=k) + [load_rgb(s.path) for s in RunDir(trained_run).data().splits["val"][:3]]
        for k in range(6)
    ]
    alone = [model.score_images(b)[1] for b in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: model.score_images(b)[1], batches * 3))
    for k, got in enumerate(together):
        np.testing.assert_allclose(got, alone[k % len(batches)], rtol=1e-4)


def labelled_dicoms(root, kernel: str = "B70f") -> str:
    """A site's labelled DICOM slices (a folder per class and patient), their headers naming scanner and kernel."""
    import pydicom

    from tests.medical_files import chest_hu, write_dicom

    for label, covid in (("COVID", True), ("NonCOVID", False)):
        for patient in (1, 2, 3):
            folder = root / label / f"{label}-{patient}"
            folder.mkdir(parents=True)
            path = write_dicom(folder / "a.dcm", chest_hu(96, covid=covid, seed=patient))
            ds = pydicom.dcmread(path)
            ds.Manufacturer, ds.ConvolutionKernel, ds.PixelSpacing, ds.SliceThickness = "SIEMENS", kernel, [0.7, 0.7], 1
            ds.save_as(path)
    return str(root)


def test_training_records_what_it_was_trained_on(trained_run):
    card = json.loads((RunDir(trained_run).ood_dir / "ood.json").read_text())
    n = len(RunDir(trained_run).data().splits["train"])
    assert card["acquisitions"] == {
        "kinds": {"image file": n},
        "scanners": [],
        "pixel_spacing": None,
        "slice_thickness": None,
        "aspect": [1.2, 1.2],
    }  # fmt: skip (48 x 40 figures)
    assert "no scanner acquisition seen" in load_trained(trained_run).card.ood["acquisitions_seen"]


def test_scanner_slices_are_flagged_everywhere_for_a_model_trained_on_image_files(trained_run, tmp_path, capsys):
    """Trained on PNG files only: every DICOM slice and study is outside what it learned, whatever its pixels,
    in predict (CSV, JSON, the warning), evaluate --on and the API; a PNG is left to the image detector."""
    from tests.data.test_dicom_study import make_study

    cd = make_study(tmp_path / "cd")
    image = tmp_path / "val.png"
    load_rgb(RunDir(trained_run).data().splits["val"][0].path).save(image)
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained_run), str(cd), str(image), "--out", str(out)]) == 0
    assert "not seen in training: a scanner acquisition (DICOM)" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    dicom_rows = [r for r in rows if r["path"] == str(cd) and r["slice"] != ""]
    assert dicom_rows and all(r["in_distribution"] == "0" for r in dicom_rows)
    assert all("image files only" in r["ood_reason"] for r in dicom_rows)
    png = next(r for r in rows if r["path"] == str(image))
    assert "scanner" not in png["ood_reason"]
    (study,) = json.loads(out.with_suffix(".json").read_text())["studies"]
    assert study["in_distribution"] is False and study["ood_fraction"] == 1.0

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["evaluate", str(run), "--on", f"pacs={labelled_dicoms(tmp_path / 'pacs')}", "--bootstrap", "0"]) == 0
    assert json.loads((run / "eval-pacs" / "metrics.json").read_text())["ood"]["fraction_flagged"] == 1.0

    client = TestClient(
        __import__("covidct.inference.serve", fromlist=["create_app"]).create_app(load_trained(trained_run))
    )
    body = client.post(
        "/api/v1/predict",
        files={"file": ("a.dcm", (cd / "DIR1" / "SUB0" / "IM0000").read_bytes(), "application/dicom")},
    ).json()
    assert body["in_distribution"] is False and "scanner acquisition" in body["ood_reason"]


def test_a_square_image_is_flagged_by_its_shape_everywhere(trained_run, tmp_path, capsys):
    """Trained on 48 x 40 figures: square images (a scanner's frame) are outside what it learned, by their header
    alone, in predict (CSV and the warning), evaluate --on and the API; the training shape is not flagged for it."""
    from tests.conftest import make_sars_layout

    square, same = tmp_path / "square.png", tmp_path / "same.png"
    val = load_rgb(RunDir(trained_run).data().splits["val"][0].path)
    val.resize((40, 40)).save(square)
    val.save(same)
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained_run), str(square), str(same), "--out", str(out)]) == 0
    assert "aspect 1.00 (width / height), outside the 1.20-1.20" in capsys.readouterr().out
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    assert rows[str(square)]["in_distribution"] == "0" and "aspect 1.00" in rows[str(square)]["ood_reason"]
    assert "aspect" not in rows[str(same)]["ood_reason"]

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    site = make_sars_layout(tmp_path / "site", 4, 4, size=(40, 40))
    assert main(["evaluate", str(run), "--on", f"site={site}", "--bootstrap", "0"]) == 0
    assert json.loads((run / "eval-site" / "metrics.json").read_text())["ood"]["fraction_flagged"] == 1.0

    client = TestClient(
        __import__("covidct.inference.serve", fromlist=["create_app"]).create_app(load_trained(trained_run))
    )
    body = client.post("/api/v1/predict", files={"file": ("s.png", square.read_bytes(), "image/png")}).json()
    assert body["in_distribution"] is False and "aspect 1.00" in body["ood_reason"]


def test_a_site_whose_slices_were_in_training_passes_the_acquisition_check(trained_run, tmp_path):
    """The detector refitted with a site's DICOM slices among its training images (what covidct adapt does): the
    site's scanner and kernel pass; another kernel of the same scanner is flagged, slice by slice."""
    from covidct.data.sources import external_set
    from covidct.inference.predict import predict_inputs
    from covidct.inference.run_detector import fit_for_run
    from covidct.verdict import IMAGE_UNLIKE

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _, site = external_set(f"site={labelled_dicoms(tmp_path / 'site')}")
    fit_for_run(run, extra_train=site)
    model = load_trained(run)
    assert model.card.ood["acquisitions"]["scanners"] == [["SIEMENS", "B70F"]]
    same = predict_inputs(model, [s.path for s in site])
    assert all(r["ood_reason"] in ("", IMAGE_UNLIKE) for r in same)
    other = [s.path for s in external_set(f"o={labelled_dicoms(tmp_path / 'other', kernel='B30f')}")[1]]
    assert all("kernel B30F not seen" in r["ood_reason"] for r in predict_inputs(model, other))
