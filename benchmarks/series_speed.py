"""Issue 14's speed target: a 512 x 512 JPEG Lossless CT series scored end to end (decode, lung mask, model, CSV)
with the ONNX model, and memory that stays flat with the series' length.

    .venv/bin/python benchmarks/series_speed.py --slices 100 300 [--model efficientnet_lite0]

Writes the series (a chest phantom in HU, compressed by GDCM as JPEG Lossless SV1) to a temporary folder, exports
the backbone (random weights: speed does not depend on them) to ONNX with a model card, then times
`covidct predict` in a fresh process per series length and reads its peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_series(folder: Path, n: int) -> None:
    from tests.medical_files import chest_hu, write_dicom

    folder.mkdir(parents=True)
    for k in range(n):
        lungs = 0.1 * n <= k < 0.9 * n  # neck and abdomen at the ends
        write_dicom(
            folder / f"IM{k:05d}",
            chest_hu(512, lungs=lungs, covid=k % 7 == 0, seed=k),
            z=-1.5 * k,
            instance=k + 1,
            description="LUNG 1.5 B70f",
            compress="jpeg-lossless",
        )


def export(model: str, out: Path) -> None:
    import torch

    from covidct.inference.export import write_onnx
    from covidct.inference.scorer import Scorer
    from covidct.models import create_model
    from covidct.runs.model_card import ModelCard

    net, pre = create_model(model, pretrained=False)
    pre = pre.__class__(**{**pre.to_dict(), "grayscale": True, "crop": "lung"})
    out.mkdir(parents=True, exist_ok=True)
    write_onnx(Scorer(net.eval().to(memory_format=torch.contiguous_format)), pre.input_size, out / "model.onnx")
    ModelCard(model, pre, ["NonCOVID", "COVID"], 0.5).write(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, nargs="+", default=[100, 300])
    ap.add_argument("--model", default="efficientnet_lite0")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export(args.model, tmp / "model")
        results = []
        for n in args.slices:
            write_series(tmp / f"s{n}", n)
            start = time.perf_counter()
            code = (
                "import resource, sys; from covidct.cli import main; "
                f"rc = main(['predict', '{tmp / 'model'}', '{tmp / f's{n}'}', '--out', '{tmp / f'p{n}.csv'}']); "
                "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
            )
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            wall = time.perf_counter() - start
            peak = int(proc.stderr.split("PEAK_KB")[-1].split()[0]) // 1024
            report = json.loads((tmp / f"p{n}.json").read_text())
            series = report["studies"][0]["series"][0]
            results.append(
                {
                    "slices": n,
                    "seconds": round(wall, 2),
                    "peak_rss_mb": peak,
                    "slices_in_lung": series["slices_in_lung"],
                }
            )
            print(results[-1], flush=True)
    print(json.dumps({"model": args.model, "runtime": "onnxruntime", "results": results}, indent=1))


if __name__ == "__main__":
    main()
