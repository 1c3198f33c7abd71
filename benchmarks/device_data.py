"""A compact copy of COVID-CT to carry to a GPU machine (the device tool carries at most 64 MiB; the dataset is
95 MB): the official layout and split files, every image made grey (what --grayscale does first, with the same
PIL conversion) and shrunk so that its shorter side is 256 px (what the training transform's Resize(256) does
next), saved as PNG (lossless). Training sees nearly the same pixels; evaluation resizes 256-px images instead of
the originals to 224 x 224, a small difference: figures from this copy are labelled as such in RESULTS.md.

    .venv/bin/python benchmarks/device_data.py ../shared/datasets/covid-ct .devdata/covid-ct
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from covidct.data.images import IMAGE_SUFFIXES, load_rgb


def main(src: Path, dst: Path) -> None:
    shutil.copytree(src / "Data-split", dst / "Data-split", dirs_exist_ok=True)
    for path in sorted((src / "Images-processed").rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        img = load_rgb(path).convert("L")
        w, h = img.size
        if min(w, h) > 256:
            img = img.resize((round(w * 256 / min(w, h)), round(h * 256 / min(w, h))), Image.Resampling.BILINEAR)
        img.save(out, format="PNG", optimize=True)  # the file keeps its name (.jpg too): covidct reads by content


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
