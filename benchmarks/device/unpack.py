"""On the lent machine: the WebP copies of benchmarks/device/pack.py back to PNG files under their original names
("x.jpg.webp" -> "x.jpg", PNG inside: covidct's loaders find images by name and decode them by content).

    python3 benchmarks/device/unpack.py .devdata/data /tmp/data [processes]
"""

import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

SRC, DST = Path(sys.argv[1]), Path(sys.argv[2])


def unpack(path: Path) -> None:
    out = DST / path.relative_to(SRC).with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.open(path).convert("L").save(out, format="PNG", compress_level=1)


if __name__ == "__main__":
    for p in SRC.rglob("*"):
        if p.is_file() and p.suffix in (".txt", ".md"):
            (DST / p.relative_to(SRC)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, DST / p.relative_to(SRC))
    files = sorted(SRC.rglob("*.webp"))
    with ProcessPoolExecutor(int(sys.argv[3]) if len(sys.argv) > 3 else 16) as pool:
        list(pool.map(unpack, files, chunksize=32))
    print("unpacked", len(files), "images to", DST)
