"""Which backend scores a covidct model fastest here, and what each does to the scores: PyTorch eager (batch norm
folded, channels-last), torch.compile (inductor, fp32), PyTorch under bf16 autocast, ONNX Runtime fp32 (the run's
graph, what covidct uses) and ONNX Runtime int8 (static quantisation, QDQ, per channel, calibrated on 64 validation
images). Throughput on a batch of 16 on every core; the scores of the COVID-CT test split against PyTorch fp32
(largest and mean difference) and the test AUC each gives.

Usage: .venv/bin/python benchmarks/backends.py RUN_DIR [--skip-compile]
Prints Markdown (benchmarks/SPEED.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from covidct.data import load_rgb
from covidct.evaluation.metrics import roc_auc
from covidct.inference.imagenet_probe import blend_logits
from covidct.inference.load import load_checkpoint, onnx_session
from covidct.runs import RunDir

BATCH = 16


def rate(score, x: torch.Tensor, repeats: int = 3) -> float:
    """Images per second of score(x[batch]) over the whole of x, the best of `repeats` passes after a warm-up."""
    score(x[:BATCH])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(x), BATCH):
            score(x[i : i + BATCH])
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def scores_of(score, x: torch.Tensor) -> np.ndarray:
    return np.concatenate([score(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def margin_to_score(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    logits = torch.as_tensor(np.asarray(logits)).float()
    return logits.softmax(1)[:, 1].numpy()


def int8_graph(graph: Path, calibration: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.split(calibration, len(calibration) // 8))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    folder = Path(tempfile.mkdtemp())
    quant_pre_process(str(graph), str(folder / "pre.onnx"))
    options = {"quant_format": QuantFormat.QDQ, "per_channel": True}
    types = {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8}
    quantize_static(str(folder / "pre.onnx"), str(folder / "int8.onnx"), Reader(), **options, **types)
    return folder / "int8.onnx"


def backends(model, run: RunDir, calibration: np.ndarray, compile_too: bool) -> dict:
    scorer = model.scoring()
    net, probe = scorer.network, scorer.probe

    def eager(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return margin_to_score(probe.blend(net(x), x))

    def bf16(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return margin_to_score(probe.blend(net(x), x))

    graph = onnx_session(run.scorer_graph_path)
    quantised = onnx_session(int8_graph(run.scorer_graph_path, calibration))
    out = {
        "PyTorch fp32 (eager)": eager,
        "PyTorch bf16 autocast": bf16,
        "ONNX Runtime fp32 (covidct)": lambda x: margin_to_score(graph.run(None, {"image": x.numpy()})[0]),
        "ONNX Runtime int8 (static, QDQ)": lambda x: margin_to_score(quantised.run(None, {"image": x.numpy()})[0]),
    }
    if compile_too:
        compiled_net, compiled_probe = torch.compile(net), torch.compile(probe)

        def compiled(x: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return margin_to_score(blend_logits(compiled_net(x), compiled_probe(x), probe.share))

        out["torch.compile fp32 (inductor)"] = compiled
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--skip-compile", action="store_true")
    args = p.parse_args()
    run = RunDir.at(args.run)
    model = load_checkpoint(run.checkpoint("best"), run)
    data = run.data()
    test = data.splits["test"]
    x = model.tensor([load_rgb(s.path) for s in test])
    labels = np.array([s.label for s in test])
    calibration = model.tensor([load_rgb(s.path) for s in data.splits["val"][:64]]).numpy()
    rows = []
    reference = None
    for name, score in backends(model, run, calibration, not args.skip_compile).items():
        start = time.perf_counter()
        scores = scores_of(score, x)  # the first pass: compiles where there is compiling to do
        first = time.perf_counter() - start
        reference = scores if reference is None else reference
        rows.append((name, rate(score, x), first, scores))
    print(f"{os.cpu_count()} threads, batch {BATCH}; COVID-CT test split ({len(test)} images)\n")
    print("| backend | images/s | first pass s | largest score difference | mean difference | test AUC |")
    print("|---|---|---|---|---|---|")
    for name, r, first, scores in rows:
        d = np.abs(scores - reference)
        auc = roc_auc(labels, scores)
        print(f"| {name} | {r:.0f} | {first:.1f} | {d.max():.2e} | {d.mean():.2e} | {auc:.4f} |")


if __name__ == "__main__":
    main()
