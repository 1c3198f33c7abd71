"""The scoring ceiling of this CPU for a covidct model, in fp32 on every core: what one image costs (the
floating-point work of both networks, the fine-tuned one and the ImageNet probe's, counted by torch's FLOP counter)
against what these cores attain.

- Roofline bound: all of that work at the rate of a large fp32 matrix product (the cores' best case). A true upper
  bound, and a loose one: depthwise convolutions cannot run at a matrix product's rate.
- Convolution ceiling: the scorer's graph (checkpoints/best.onnx) run by ONNX Runtime with its own profiler; the
  time of its convolutions alone, as ONNX Runtime runs them inside the graph (its fastest layout), per image. Every
  image needs these convolutions: with everything else free (decoding, the detector's statistics, the blend,
  layout changes, Python), no faster than this.
- Beside them, measured in the same process: the whole scorer as covidct runs it and as PyTorch runs it.

Usage: .venv/bin/python benchmarks/ceiling.py RUN_DIR   (a run trained with its graph, or: covidct export RUN and
give RUN/export/model.onnx as --graph). Prints Markdown (benchmarks/SPEED.md).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from covidct.inference.load import load_checkpoint, onnx_session, with_detector
from covidct.ood.features import logits_and_features
from covidct.runs import RunDir

BATCH = 16
THREADS = os.cpu_count() or 1


def timed(run, repeats: int = 5) -> float:
    """Median seconds of `run()` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def convolution_seconds(graph: Path, x: np.ndarray, repeats: int = 5) -> tuple[float, float]:
    """(seconds per image of the graph's Conv kernels, seconds per image of all its kernels), by ONNX Runtime's
    profiler over `repeats` runs after a warm-up."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    s = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    for _ in range(repeats + 1):
        s.run(None, {"image": x})
    events = json.loads(Path(s.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warmed = runs[0]["ts"] + runs[0]["dur"]  # the first run (allocations, first touches) is not counted
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    counted = [e for e in kernels if e["ts"] >= warmed]
    conv = sum(e["dur"] for e in counted if e["args"]["op_name"] in ("Conv", "FusedConv", "NchwcConv"))
    total = sum(e["dur"] for e in counted)
    images = repeats * len(x)
    return conv / 1e6 / images, total / 1e6 / images


def gemm_gflops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: a @ b) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--graph", type=Path, help="an ONNX graph of the scorer (default RUN/checkpoints/best.onnx)")
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    run = RunDir(args.run)
    model = with_detector(load_checkpoint(run.checkpoint("best"), run), run.ood_dir)
    scorer = model.scoring()  # batch norm folded, as scoring runs them
    net, probe = scorer.network, scorer.probe
    size = model.preprocessing.input_size
    x1 = torch.randn(1, 3, size, size)
    parts = {"fine-tuned network": net} | ({} if probe is None else {"ImageNet probe": probe})
    flops = {}
    for name, part in parts.items():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            part(x1) if part is not net else logits_and_features(net, x1)
        flops[name] = counter.get_total_flops()
    total_flops = sum(flops.values())
    peak = gemm_gflops()
    x = torch.randn(BATCH, 3, size, size)
    graph = args.graph or run.scorer_graph_path
    conv, kernels = convolution_seconds(graph, x.numpy())
    whole = onnx_session(graph, THREADS)  # as covidct runs it
    onnx_rate = BATCH / timed(lambda: whole.run(None, {"image": x.numpy()}))
    torch_rate = BATCH / timed(lambda: model.logits_and_features(x))
    print(f"{THREADS} threads, batch {BATCH}, fp32, {graph.name}\n")
    print("| part | GFLOP per image |")
    print("|---|---|")
    for name, f in flops.items():
        print(f"| {name} | {f / 1e9:.3f} |")
    print(f"| both | {total_flops / 1e9:.3f} |\n")
    print(f"- fp32 matrix product 2048 x 2048 (the cores' best case): {peak:.0f} GFLOP/s")
    print(f"- roofline bound (all the work at that rate): {peak * 1e9 / total_flops:.0f} images/s")
    print(
        f"- convolutions inside the graph (ONNX Runtime's profiler): {conv * 1e3:.2f} ms per image, "
        f"{total_flops / conv / 1e9:.0f} GFLOP/s; all kernels {kernels * 1e3:.2f} ms"
    )
    print(f"- **convolution ceiling** (the convolutions alone, everything else free): {1 / conv:.0f} images/s")
    print(f"- the scorer as covidct runs it (ONNX Runtime, whole graph): {onnx_rate:.0f} images/s")
    print(f"- the same in PyTorch (batch norm folded, channels-last): {torch_rate:.0f} images/s")


if __name__ == "__main__":
    main()
