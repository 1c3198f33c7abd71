"""The scoring ceiling of this CPU for a covidct model: what one image costs (the floating-point work of both
networks, the fine-tuned one and the ImageNet probe's, counted by torch's FLOP counter) against what these cores
attain on exactly those operations, each convolution of the scorer timed alone in ONNX Runtime (the backend covidct
scores with) in fp32, batch 16, on every core. The sum of the convolutions' times is the least time an image can
take in fp32 here; its inverse is the ceiling in images per second. Beside it: a large fp32 matrix product (the
best case of these cores), and the whole scorer as covidct runs it (the ONNX graph of the export) and as PyTorch
runs it, measured in the same process.

Usage: .venv/bin/python benchmarks/ceiling.py RUN_DIR   (a run with an export: covidct export RUN)
Prints a Markdown table (benchmarks/SPEED.md).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from covidct.inference.load import load_checkpoint, with_detector
from covidct.ood.features import logits_and_features
from covidct.runs import RunDir

BATCH = 16
THREADS = os.cpu_count() or 1


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def timed(run, repeats: int = 5) -> float:
    """Median seconds of `run()` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def convolutions(net: nn.Module, x: torch.Tensor) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Every convolution a forward pass of `net` runs, with its input's shape."""
    seen: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append((m, tuple(i[0].shape))))
        for m in net.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def conv_graph(conv: nn.Conv2d, shape: tuple[int, ...]) -> onnx.ModelProto:
    """One Conv node (with bias, as batch norm folded leaves it) of conv's size on a batch of BATCH."""
    weight = numpy_helper.from_array(conv.weight.detach().float().numpy(), "w")
    bias = numpy_helper.from_array(np.zeros(conv.out_channels, np.float32), "b")
    node = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        strides=list(conv.stride),
        pads=[*conv.padding, *conv.padding],
        group=conv.groups,
        dilations=list(conv.dilation),
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, *shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_seconds(conv: nn.Conv2d, shape: tuple[int, ...]) -> float:
    """Seconds per image of this convolution alone in ONNX Runtime."""
    s = session(conv_graph(conv, shape))
    x = np.random.default_rng(0).standard_normal((BATCH, *shape[1:])).astype(np.float32)
    return timed(lambda: s.run(None, {"x": x})) / BATCH


def gemm_gflops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: a @ b) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    run = RunDir(args.run)
    model = with_detector(load_checkpoint(run.checkpoint("best"), run), run.ood_dir)
    net, probe = model.scoring()  # batch norm folded, as scoring runs them
    size = model.preprocessing.input_size
    x1 = torch.randn(1, 3, size, size)
    parts = {"fine-tuned network": net} | ({} if probe is None else {"ImageNet probe": probe})
    rows, total_flops, total_seconds = [], 0.0, 0.0
    for name, part in parts.items():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            part(x1) if part is not net else logits_and_features(net, x1)
        flops = counter.get_total_flops()
        seconds = sum(conv_seconds(conv, shape) for conv, shape in convolutions(part, x1))
        rows.append((name, flops, seconds))
        total_flops, total_seconds = total_flops + flops, total_seconds + seconds
    peak = gemm_gflops()
    x = torch.randn(BATCH, 3, size, size)
    onnx_path = run.export_dir / "model.onnx"
    whole = session(str(onnx_path)) if onnx_path.is_file() else None
    onnx_rate = BATCH / timed(lambda: whole.run(None, {"image": x.numpy()})) if whole else float("nan")
    torch_rate = BATCH / timed(lambda: model.score_batch(x))
    print(f"{THREADS} threads, batch {BATCH}, fp32; {os.uname().machine}\n")
    print("| part | GFLOP per image | its convolutions alone, ms per image | their GFLOP/s |")
    print("|---|---|---|---|")
    for name, flops, seconds in rows:
        print(f"| {name} | {flops / 1e9:.3f} | {seconds * 1e3:.2f} | {flops / seconds / 1e9:.0f} |")
    print(f"| both | {total_flops / 1e9:.3f} | {total_seconds * 1e3:.2f} | {total_flops / total_seconds / 1e9:.0f} |\n")
    print(f"- fp32 matrix product 2048 x 2048 (the cores' best case): {peak:.0f} GFLOP/s")
    print(f"- roofline bound (all the work at that rate): {peak * 1e9 / total_flops:.0f} images/s")
    print(f"- **ceiling** (every convolution at its own measured rate, nothing else): {1 / total_seconds:.0f} images/s")
    print(f"- the scorer as covidct runs it (ONNX Runtime, the export's graph): {onnx_rate:.0f} images/s")
    print(f"- the same in PyTorch (batch norm folded, channels-last): {torch_rate:.0f} images/s")


if __name__ == "__main__":
    main()
