"""covidct serve: every route and every bad input through FastAPI's TestClient, and the page in real Chromium."""

import base64
import io
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from covidct import DISCLAIMER
from covidct.config import INPUT_LIMITS, InputLimits
from covidct.errors import ConfigError
from covidct.inference.load import load_trained as load_model
from covidct.inference.serve import create_app
from tests.conftest import CHROMIUM_FLAGS, synthetic_ct
from tests.medical_files import write_dicom
from tests.upload_files import png_bytes, png_header_claiming, zip_of


@pytest.fixture(scope="module")
def model(exported_model):
    return load_model(exported_model)


@pytest.fixture(scope="module")
def client(model):
    return TestClient(create_app(model))


@pytest.fixture(scope="module")
def ct_png():
    return png_bytes(synthetic_ct(np.random.default_rng(5), True, (64, 48)))


def test_health_model_docs_and_page(client, model):
    assert client.get("/health").json() == {"status": "ok", "model": model.model_id}
    card = client.get("/api/v1/model").json()
    assert card["architecture"] == "timm:resnet10t" and card["class_names"] == ["NonCOVID", "COVID"]
    assert card["serving"]["max_upload_mb"] == 20
    assert "/api/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/").text
    assert DISCLAIMER in page and 'id="opacity"' in page
    assert "http://" not in page and "https://" not in page  # nothing from a CDN: works offline


def test_predict_png_agrees_with_the_model(client, model, ct_png):
    r = client.post("/api/v1/predict", files={"file": ("ct.png", ct_png, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = float(model.score_images([Image.open(io.BytesIO(ct_png)).convert("RGB")], check=False)[0][0])
    assert body["score"] == pytest.approx(expected, abs=1e-5)
    assert body["label"] == ("COVID" if body["score"] >= body["threshold"] else "NonCOVID")
    assert body["cam"] is None and body["cam_explains"] is None and body["disclaimer"] == DISCLAIMER


def test_predict_with_cam_returns_an_overlay_of_the_image_size(client, model, ct_png):
    body = client.post("/api/v1/predict?cam=true", files={"file": ("ct.png", ct_png)}).json()
    assert body["cam"].startswith("data:image/png;base64,")
    assert body["cam_explains"] == model.heat_map_explains == "the network that gives the score"  # no probe here
    with Image.open(io.BytesIO(base64.b64decode(body["cam"].split(",", 1)[1]))) as overlay:
        assert overlay.size == (64, 48)
        assert np.asarray(overlay).std() > 1


def test_predict_dicom(client, model, tmp_path):
    hu = synthetic_ct(np.random.default_rng(1), True).astype(np.float32) * 6 - 1350
    path = write_dicom(tmp_path / "s.dcm", hu)
    r = client.post("/api/v1/predict", files={"file": ("s.dcm", path.read_bytes(), "application/dicom")})
    assert r.status_code == 200, r.text
    # the lung window (-1350 HU black .. +150 HU white) applied here by hand to the HU that went into the file
    grey = np.clip((hu + 1350) / 1500 * 255, 0, 255).round().astype(np.uint8)
    expected = float(model.score_images([Image.fromarray(grey).convert("RGB")], check=False)[0][0])
    assert r.json()["score"] == pytest.approx(expected, abs=1e-4)


def test_bad_inputs_get_json_errors_and_the_server_keeps_serving(model, client, ct_png, tmp_path):
    empty_dicom = write_dicom(tmp_path / "e.dcm", np.zeros((4, 4), np.float32), pixels=False).read_bytes()
    cases = {
        "notes.txt": (b"just some text, not an image", 415, "unsupported file type"),
        "cut.png": (ct_png[: len(ct_png) // 2], 422, "cannot be decoded"),
        "bomb.png": (png_header_claiming(8_000, 7_500), 422, f"over the limit of {INPUT_LIMITS.pixels:,}"),
        "e.dcm": (empty_dicom, 422, "no pixel data"),
        "zero.png": (b"", 422, "empty"),
    }
    for name, (data, status, message) in cases.items():
        r = client.post("/api/v1/predict", files={"file": (name, data)})
        assert r.status_code == status, (name, r.text)
        assert message in r.json()["detail"] and (name in r.json()["detail"] or name == "zero.png")
    r = client.post("/api/v1/predict", data={"nothing": "here"})
    assert r.status_code == 422  # no file field
    small = TestClient(create_app(model, limits=InputLimits(upload_mb=0.001)))
    r = small.post("/api/v1/predict", files={"file": ("big.png", ct_png + b"\0" * 2000)})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert client.get("/health").status_code == 200
    assert client.post("/api/v1/predict", files={"file": ("ct.png", ct_png)}).status_code == 200


def test_uploads_past_the_bytes_in_flight_get_503_with_retry_after(model, ct_png):
    app = create_app(model, limits=InputLimits(upload_mb=1, archive_mb=1, inflight_mb=3))
    client = TestClient(app)
    budget = app.state.inflight
    budget.take(budget.limit - 100)  # as if other uploads were being read now
    r = client.post("/api/v1/predict", files={"file": ("ct.png", ct_png)})
    assert r.status_code == 503 and r.headers["Retry-After"] == "2" and "inflight_mb" in r.json()["detail"]
    budget.give(budget.limit - 100)
    assert client.post("/api/v1/predict", files={"file": ("ct.png", ct_png)}).status_code == 200
    assert budget.held == 0  # each request gives back what it took, answered or refused
    assert client.get("/health").status_code == 200  # reading routes are not counted
    with pytest.raises(ConfigError, match="inflight_mb"):
        InputLimits(archive_mb=100, inflight_mb=150)


def test_api_key_is_checked_on_every_api_route(model, ct_png):
    client = TestClient(create_app(model, api_key="s3cret"))
    assert client.get("/api/v1/model").status_code == 401
    assert client.post("/api/v1/predict", files={"file": ("ct.png", ct_png)}).status_code == 401
    assert client.get("/api/v1/model", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/api/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
    ok = client.post("/api/v1/predict", files={"file": ("ct.png", ct_png)}, headers={"X-API-Key": "s3cret"})
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200  # liveness stays open


@pytest.fixture
def live_server(exported_model):
    """`covidct serve` as a user starts it, on 127.0.0.1. `--port 0`: the OS picks a free port at bind time and
    uvicorn announces it (no window between finding a free port and binding it, where another process can take it)."""
    import re

    proc = subprocess.Popen(
        [sys.executable, "-m", "covidct", "serve", str(exported_model), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    port, seen, deadline = None, [], time.time() + 60
    while port is None and time.time() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            pytest.fail(f"server exited: {''.join(seen)}")
        seen.append(line)
        m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        port = int(m.group(1)) if m else None
    if port is None:
        proc.kill()
        pytest.fail("server did not start within 60 s")
    import threading

    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the log pipe drained
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.slow
def test_page_in_chromium_shows_score_label_and_heat_map(live_server, model, chromium, ct_png, tmp_path):
    from playwright.sync_api import sync_playwright

    image = tmp_path / "scan.png"
    image.write_bytes(ct_png)
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("request", lambda r: None if r.url.startswith((live_server, "data:")) else outside.append(r.url))
        page.goto(live_server + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('resnet10t')")
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#result:not(.hidden)", timeout=30_000)
        score = float(page.text_content("#score"))
        label = page.text_content("#label")
        threshold = float(page.text_content("#threshold"))
        cam = page.eval_on_selector("#cam", "e => [e.complete, e.naturalWidth, e.naturalHeight, e.src.slice(0, 22)]")
        bar = page.eval_on_selector("#fill", "e => e.style.width")
        page.fill("#opacity", "80")
        opacity = page.eval_on_selector("#cam", "e => e.style.opacity")
        disclaimer = page.text_content("#disclaimer")
        browser.close()
    expected = float(model.score_images([Image.open(image).convert("RGB")], check=False)[0][0])
    assert score == pytest.approx(expected, abs=1e-3)  # as shown on the page (3 decimals)
    assert label == ("COVID" if score >= threshold else "NonCOVID")
    assert cam == [True, 64, 48, "data:image/png;base64,"]
    assert bar.endswith("%") and abs(float(bar[:-1]) - 100 * score) < 0.1
    assert opacity == "0.8"
    assert disclaimer == DISCLAIMER and not outside


@pytest.mark.slow
def test_page_in_chromium_shows_a_zipped_study_with_its_top_slices(live_server, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.data.test_dicom_study import make_study

    cd = make_study(tmp_path / "cd")
    archive = tmp_path / "study.zip"
    archive.write_bytes(zip_of({str(p.relative_to(cd)): p.read_bytes() for p in sorted(cd.rglob("*")) if p.is_file()}))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(live_server + "/")
        page.set_input_files("#file", str(archive))
        page.wait_for_selector("#series:not(.hidden)", timeout=60_000)
        headings = page.eval_on_selector_all("#series h2, #series h3", "els => els.map(e => e.textContent)")
        pictures = page.eval_on_selector_all(
            "#series .tops img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt, e.src.slice(0, 22)])"
        )
        error = page.text_content("#error")
        browser.close()
    assert not error and len(headings) == 3  # the study, then its two series
    assert headings[0].endswith(("label COVID", "label NonCOVID")) and "LUNG 1.0" in " ".join(headings)
    assert pictures and all(ok and width > 0 and src == "data:image/png;base64," for ok, width, _, src in pictures)
    assert all(alt.startswith("slice ") for _, _, alt, _ in pictures)


def test_explanations_run_one_at_a_time(client, ct_png, monkeypatch):
    """Grad-CAM hooks the shared model's layers; parallel explanations crashed the server under load
    (benchmarks/load_test.py --cam), so they are serialised while scores stay parallel."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import covidct.inference.explain

    state = {"now": 0, "most": 0}
    lock = threading.Lock()
    real = covidct.inference.explain.explain

    def watched(model, images):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        try:
            return real(model, images)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(covidct.inference.explain, "explain", watched)

    def ask(_: int) -> tuple[int, bool]:
        r = client.post("/api/v1/predict?cam=true", files={"file": ("ct.png", ct_png)})
        return r.status_code, bool(r.status_code == 200 and r.json()["cam"])

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(6)))
    assert answers == [(200, True)] * 6
    assert state["most"] == 1


def test_a_zip_of_a_study_gets_the_study_result(client, tmp_path):
    from tests.data.test_dicom_study import make_study

    cd = make_study(tmp_path / "cd")
    files = {str(p.relative_to(cd)): p.read_bytes() for p in sorted(cd.rglob("*")) if p.is_file()}
    r = client.post("/api/v1/predict", files={"file": ("study.zip", zip_of(files))})
    assert r.status_code == 200, r.text
    body = r.json()
    (study,) = body["studies"]
    assert study["from_series"] == "LUNG 1.0 B70f" and len(study["series"]) == 2
    assert study["label"] in ("COVID", "NonCOVID") and "disclaimer" in body
    assert any("localizer" in s for s in body["skipped"]) and not any(str(tmp_path) in s for s in body["skipped"])
    # each series' top slices come back as pictures: the lung window without ?cam, heat maps over it with it
    plain = [top for s in study["series"] for top in s["top_slices"]]
    assert plain and all("file" not in top for top in plain)
    shown = [top for top in plain if "image" in top]
    assert 0 < len(shown) <= 5 * len(study["series"])
    with_cam = client.post("/api/v1/predict?cam=true", files={"file": ("study.zip", zip_of(files))}).json()
    heat = [top for s in with_cam["studies"][0]["series"] for top in s["top_slices"] if "image" in top]
    assert [t["slice"] for t in heat] == [t["slice"] for t in shown]
    for a, b in zip(shown, heat):
        pa, pb = (Image.open(io.BytesIO(base64.b64decode(x["image"].split(",", 1)[1]))) for x in (a, b))
        assert max(pa.size) <= 256 and pa.size == pb.size
        grey = np.asarray(pa.convert("RGB"), dtype=np.int16)
        assert np.abs(grey[..., 0] - grey[..., 2]).max() == 0  # the plain picture is grey
        assert np.abs(np.asarray(pb.convert("RGB"), dtype=np.int16) - grey).mean() > 1  # the heat map is on it


def test_zip_limits_and_climbing_paths(client):
    import zipfile

    r = client.post("/api/v1/predict", files={"file": ("evil.zip", zip_of({"../../etc/x.dcm": b"x"}))})
    assert r.status_code == 422 and "climbs out" in r.json()["detail"]
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (64 * 1024**2))  # 64 MB of zeros: about 64 KB compressed
    r = client.post("/api/v1/predict", files={"file": ("bomb.zip", bomb.getvalue())})
    assert r.status_code == 413 and "zip bomb" in r.json()["detail"]
    r = client.post("/api/v1/predict", files={"file": ("notes.zip", zip_of({"a.txt": b"hello"}))})
    assert r.status_code == 422 and "notes.zip" in r.json()["detail"] and "DICOM" in r.json()["detail"]


@pytest.mark.slow
def test_page_in_chromium_shows_the_out_of_distribution_banner(live_server, model, chromium, ct_png, tmp_path):
    """The banner appears above the score for an image unlike the training images, and only then."""
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(3)
    noise = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noise)
    scan = tmp_path / "scan.png"
    scan.write_bytes(ct_png)
    shown = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(live_server + "/")
        for path in (scan, noise):
            page.set_input_files("#file", str(path))
            page.wait_for_selector("#result:not(.hidden)", timeout=30_000)
            shown[path.name] = (page.is_visible("#ood"), page.text_content("#ood"))
            page.evaluate("document.getElementById('result').classList.add('hidden')")
        browser.close()
    _, ood = model.score_images([Image.open(p).convert("RGB") for p in (scan, noise)])
    flags = model.ood_flags(ood)
    assert flags[1] and shown["noise.png"][0] and "does not look like the images" in shown["noise.png"][1]
    assert shown["scan.png"][0] == bool(flags[0])


def test_unknown_query_parameters_and_form_fields_are_refused_by_name(client, ct_png):
    r = client.post("/api/v1/predict?cams=true", files={"file": ("x.png", ct_png, "image/png")})
    assert r.status_code == 422 and "cams" in r.json()["detail"]
    r = client.post("/api/v1/predict", files={"file": ("x.png", ct_png, "image/png")}, data={"threshold": "0.1"})
    assert r.status_code == 422 and "threshold" in r.json()["detail"]
    assert client.post("/api/v1/predict?cam=false", files={"file": ("x.png", ct_png, "image/png")}).status_code == 200
