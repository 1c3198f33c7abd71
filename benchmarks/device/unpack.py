"""On the lent machine: the WebP copies of benchmarks/device/pack.py back to PNG files under their original names
("x.jpg.webp" -> "x.jpg", PNG inside: covidct's loaders find images by name and decode them by content).

    python3 benchmarks/device/unpack.py .devdata/data /tmp/data [processes] [/tmp/data-mask]

With a fourth argument, also the copy that `--crop lung-mask` would give: each image with its ".mask.png" (pack.py)
blacked out outside the lung fields, the others as they are (lung-mask falls back to the lung crop).
"""

import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

SRC, DST = Path(sys.argv[1]), Path(sys.argv[2])
MASKED = Path(sys.argv[4]) if len(sys.argv) > 4 else None


def unpack(path: Path) -> None:
    rel = path.relative_to(SRC).with_suffix("")
    img = Image.open(path).convert("L")
    for dst in (DST, MASKED) if MASKED else (DST,):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    img.save(DST / rel, format="PNG", compress_level=1)
    if MASKED:
        mask = path.with_name(rel.name + ".mask.png")
        if mask.exists():
            img = Image.composite(img, Image.new("L", img.size), Image.open(mask).convert("1"))
        img.save(MASKED / rel, format="PNG", compress_level=1)


if __name__ == "__main__":
    for p in SRC.rglob("*"):
        if p.is_file() and p.suffix in (".txt", ".md"):
            for dst in (DST, MASKED) if MASKED else (DST,):
                (dst / p.relative_to(SRC)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, dst / p.relative_to(SRC))
    files = sorted(SRC.rglob("*.webp"))
    with ProcessPoolExecutor(int(sys.argv[3]) if len(sys.argv) > 3 else 16) as pool:
        list(pool.map(unpack, files, chunksize=32))
    print("unpacked", len(files), "images to", DST)
