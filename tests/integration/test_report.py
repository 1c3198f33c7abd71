"""report.html: every section present, every image embedded, and (in Chromium) every image rendered."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from covidct.cli import main
from covidct.reporting.html import MAX_GALLERY, build_report, misclassified_gallery
from tests.conftest import CHROMIUM_FLAGS

SECTIONS = [
    "run",
    "data",
    "samples",
    "training",
    "metrics",
    "external",
    "confusion",
    "curves",
    "calibration",
    "errors",
    "model-card",
]


@pytest.fixture(scope="module")
def report(trained_run, tmp_path_factory) -> Path:
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("report") / trained_run.name))
    return build_report(run, "test")  # a copy: the report writes an evaluation into its run folder


def test_report_is_self_contained(report):
    html = report.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    sources = re.findall(r'<img[^>]*src="([^"]+)"', html)
    rows = csv.DictReader((report.parent / "eval-test" / "predictions.csv").read_text().splitlines())
    wrong = [r for r in rows if r["label"] != r["prediction"]]
    assert len(sources) == 7 + min(len(wrong), MAX_GALLERY)  # seven figures, and the gallery of misclassified images
    metrics = json.loads((report.parent / "eval-test" / "metrics.json").read_text())
    gallery = misclassified_gallery(wrong, metrics["class_names"], metrics["threshold"])
    assert html.count('<b class="ood">out of distribution</b>') == sum(m["flagged"] for m in gallery)
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from a network
    assert "Research use only" in html and "not for diagnosis" in html.lower()
    assert "resnet10t" in html and "Wilson" in html
    assert "made grey, resized to a square and normalised" in html  # the model card states the preprocessing
    assert "Where this model has been validated" in html and "no external validation yet" in html
    assert "Not validated on: whole 512 x 512 scanner slices" in html and "Shortcut probe" in html
    ood = json.loads((report.parent / "eval-test" / "metrics.json").read_text())["ood"]
    assert "flagged out of distribution" in html and f"<td>{ood['fraction_flagged']:.0%}</td>" in html
    assert "no scanner acquisition seen; every DICOM or NIfTI input is flagged" in html  # trained on PNG files


def test_gallery_carries_each_image_flag(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.new("L", (40, 30), 90).save(path)
    rows = [{"path": str(path), "score": str(s), "label": "0", "in_distribution": flag}
            for s, flag in ((0.9, "0"), (0.8, "1"), (0.7, ""))]  # fmt: skip
    gallery = misclassified_gallery(rows, ["NonCOVID", "COVID"], 0.5)
    assert [m["flagged"] for m in gallery] == [True, False, False]  # "0": flagged; "1": not; "": no detector
    assert [m["score"] for m in gallery] == [0.9, 0.8, 0.7]  # furthest from the threshold first


def test_report_renders_in_chromium(report, chromium):
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.as_uri(), wait_until="load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth, e.getBoundingClientRect().width])"
        )
        sections = page.eval_on_selector_all("section", "els => els.map(e => [e.id, e.innerText.length])")
        title = page.title()
        browser.close()
    assert images, "no images"
    broken = [alt for alt, complete, natural, shown in images if not (complete and natural > 0 and shown > 0)]
    assert not broken, f"images that did not render: {broken}"
    assert [s for s, _ in sections] == SECTIONS
    assert all(length > 20 for _, length in sections)
    assert title.startswith("covidct report")
    assert all(u.startswith(("file:", "data:")) for u in requests), requests


def test_report_cli(own_run, capsys):
    assert main(["report", str(own_run)]) == 0
    assert "report.html" in capsys.readouterr().out
