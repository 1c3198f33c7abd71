"""report.html: every section present, every image embedded, and (in Chromium) every image rendered."""

import json
import re
import shutil
from pathlib import Path

import pytest

from covidct.cli import main
from covidct.evaluation.writing import misclassified
from covidct.fileio import write_csv
from covidct.reporting.html import MAX_GALLERY, build_report, misclassified_gallery
from covidct.verdict import flag_cell
from tests.conftest import CHROMIUM_FLAGS

# in the order a reader asks: how good, where validated and flagged, the errors, then how it was made
SECTIONS = [
    "metrics",
    "curves",
    "external",
    "confusion",
    "errors",
    "calibration",
    "training",
    "data",
    "samples",
    "model-card",
    "run",
]
PDF_PAGES = 12  # A4, Chromium's print: make demo's report printed 10 pages (benchmarks/RESULTS.md)


@pytest.fixture(scope="module")
def report(trained_run, tmp_path_factory) -> Path:
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("report") / trained_run.name))
    return build_report(run, "test")  # a copy: the report writes an evaluation into its run folder


def test_report_is_self_contained(report):
    html = report.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    sources = re.findall(r'<img[^>]*src="([^"]+)"', html)
    wrong = misclassified(report.parent / "eval-test")
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
    assert "Not validated on: whole 512 x 512 scanner slices" in html and "Shortcut classifier" in html
    ood = json.loads((report.parent / "eval-test" / "metrics.json").read_text())["ood"]
    assert "flagged out of distribution" in html and f"<td>{ood['fraction_flagged']:.0%}</td>" in html
    assert "no scanner acquisition seen; every DICOM or NIfTI input is flagged" in html  # trained on PNG files


def test_gallery_carries_each_image_flag(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.new("L", (40, 30), 90).save(path)
    rows = [  # as evaluate writes predictions.csv: the flag rendered by verdict.flag_cell; one right answer
        {"path": str(path), "score": s, "label": label, "prediction": 1, "in_distribution": flag_cell(flag)}
        for s, label, flag in ((0.9, 0, False), (0.8, 0, True), (0.7, 0, None), (0.95, 1, False))
    ]
    write_csv(tmp_path / "predictions.csv", rows)
    gallery = misclassified_gallery(misclassified(tmp_path), ["NonCOVID", "COVID"], 0.5)
    assert [m["flagged"] for m in gallery] == [True, False, False]  # flagged; not; no detector
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


def test_report_answers_first_and_fits_the_screen_in_chromium(report, chromium):
    """At 1280 x 800 the headline figures are on the first screen; at 1280 and at a phone's 390 px nothing runs past
    the page's width; no two captions overlap; printed to PDF it stays short."""
    from playwright.sync_api import sync_playwright

    overlap_js = """() => { const r = [...document.querySelectorAll('figcaption')].map(e => e.getBoundingClientRect())
        .filter(b => b.width > 0); let n = 0; for (let i = 0; i < r.length; i++) for (let j = i + 1; j < r.length; j++)
        { const a = r[i], b = r[j]; if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 &&
        b.top < a.bottom - 1) n++; } return n; }"""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(report.as_uri(), wait_until="load")
        headline = page.eval_on_selector("table.headline", "e => e.getBoundingClientRect().bottom")
        answer = page.text_content("p.answer")
        widths = {1280: page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")}
        overlaps = {1280: page.evaluate(overlap_js)}
        page.set_viewport_size({"width": 390, "height": 844})
        widths[390] = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        overlaps[390] = page.evaluate(overlap_js)
        pdf = page.pdf(format="A4")
        browser.close()
    assert headline <= 800, f"the headline table ends at {headline} px, below the first screen"
    assert "accuracy" in answer and "trained on" in answer and "flagged" in answer
    assert all(scroll == client for scroll, client in widths.values()), widths
    assert overlaps == {1280: 0, 390: 0}
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    assert 1 <= pages <= PDF_PAGES, pages


def test_report_puts_the_study_beside_the_run_and_says_why_rows_repeat(report):
    html = report.read_text()
    first = html.index('<section id="metrics">')
    assert first < html.index('<section id="external">') < html.index('<section id="data">')  # the answer first
    head = html[first : html.index("</section>", first)]
    assert "study: VGG-19-bn (published)" in head and "0.813" in head and "0.883" in head  # the official split
    assert 'class="answer"' in html[:first]


def test_report_cli(own_run, capsys):
    assert main(["report", str(own_run)]) == 0
    assert "report.html" in capsys.readouterr().out


def test_the_report_says_which_operating_points_repeat_the_models_own():
    from covidct.reporting.html import same_as_default

    points = [
        {"name": "default", "threshold": 0.41},
        {"name": "youden", "threshold": 0.41},
        {"name": "sensitivity>=0.95", "threshold": 0.2},
    ]
    assert same_as_default({"operating_points": points}) == ["youden"]
    assert same_as_default({"operating_points": points[::2]}) == []
