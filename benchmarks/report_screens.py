"""Screenshots of a run's report.html as a reader meets it, in Debian's Chromium through Playwright: the first screen at
1280 x 800, the whole page at 1280 wide, and the page at a phone's 390 px; and the PDF's page count (A4, Chromium's
print). Usage:
    .venv/bin/python benchmarks/report_screens.py RUN OUT_DIR
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    run, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto((run / "report.html").as_uri(), wait_until="load")
        page.screenshot(path=out / "report-first-screen.png")
        page.screenshot(path=out / "report-full-page.png", full_page=True)
        widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=out / "report-phone.png")
        pdf = page.pdf(format="A4")
        browser.close()
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    print(f"width at 1280: scroll {widths[0]}, client {widths[1]}; printed: {pages} A4 pages")


if __name__ == "__main__":
    main()
