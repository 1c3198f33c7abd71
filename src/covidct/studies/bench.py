"""`covidct bench`: training, data-pipeline and inference speed on this machine, each optimised figure beside
the naive baseline measured in the same run, and achieved FLOP/s against the device's peak.

Naive baseline: fp32, contiguous memory, images decoded from disk every time. Optimised: what covidct does by
default (bf16 autocast where the CPU has fast bf16 with the layers slow in bf16 kept in fp32, channels-last,
images decoded once). Peak FLOP/s of a CPU is
cores x clock x FLOPs per cycle per core (fp32 FMA: 64 with two 512-bit FMA units, 32 where AVX-512 runs on
256-bit units as on AMD Zen 4, 32 with AVX2, 8 otherwise), doubled for bf16 with AVX512-BF16 or AMX; an estimate
to put the figures in proportion, not a measurement.
"""

from __future__ import annotations

import os
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from covidct.data import ImageDataset, Sample, load_splits, train_transform
from covidct.inference.export import write_onnx
from covidct.inference.scorer import Scorer
from covidct.models import Preprocessing, create_model
from covidct.training.precision import cpu_has_fast_bf16, keep_fp32

DEFAULT_MODELS = ("efficientnet_lite0", "vgg19_bn", "vgg16", "resnet50")


def cpu_peak_flops() -> dict[str, Any]:
    """Estimated fp32 and bf16 peak FLOP/s of this CPU (see the module docstring for the rule)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)]
    ghz = (max(mhz) if mhz else 2000.0) / 1000
    flags = set(re.findall(r"\b\w+\b", info.split("flags", 1)[1].split("\n", 1)[0])) if "flags" in info else set()
    amd = "AuthenticAMD" in info
    per_cycle = 32 if ("avx512f" in flags and amd) else 64 if "avx512f" in flags else 32 if "avx2" in flags else 8
    cores = os.cpu_count() or 1
    fp32 = cores * ghz * 1e9 * per_cycle
    return {
        "cores": cores,
        "ghz": ghz,
        "fp32_flops_per_cycle": per_cycle,
        "fp32": fp32,
        "bf16": 2 * fp32 if cpu_has_fast_bf16() else fp32,
    }


def forward_flops(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one forward pass of one image (torch's flop counter; a training step is about 3x)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def _rate(step: Callable[[], None], n_images: int, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return n_images * steps / (time.perf_counter() - start)


def train_throughput(name: str, size: int, batch: int, optimised: bool, warmup: int, steps: int) -> float:
    """Images/s of forward + backward + AdamW step on random data: naive, or as covidct trains by default."""
    bf16 = optimised and cpu_has_fast_bf16()
    return train_step_rate(StepSetup(name, size, batch, bf16, optimised, fp32_slow=bf16), warmup, steps)


@dataclass(frozen=True)
class StepSetup:
    """One training-step configuration timed by train_step_rate: the backbone, input side and batch, and the three
    speed settings chosen separately (bf16 autocast, channels-last memory, fp32 for the layers slow in bf16)."""

    name: str
    size: int = 224
    batch: int = 32
    bf16: bool = False
    channels_last: bool = False
    fp32_slow: bool = False


def train_step_rate(setup: StepSetup, warmup: int, steps: int) -> float:
    """Images/s of training steps of `setup` (`precision.keep_fp32` for its slow layers when asked)."""
    name, size, batch, channels_last = setup.name, setup.size, setup.batch, setup.channels_last
    torch.manual_seed(0)
    model, _ = create_model(name, pretrained=False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    if setup.fp32_slow:
        keep_fp32(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup.bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _rate(step, batch, warmup, steps)


def train_phase_split(name: str, size: int, batch: int, warmup: int, steps: int) -> dict[str, float]:
    """Milliseconds per batch in forward (with loss), backward and optimizer step, as covidct trains by default."""
    torch.manual_seed(0)
    model, _ = create_model(name, pretrained=False)
    bf16 = cpu_has_fast_bf16()
    model = model.to(memory_format=torch.channels_last).train()
    if bf16:
        keep_fp32(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))
    totals = {"forward_ms": 0.0, "backward_ms": 0.0, "optimizer_ms": 0.0}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= warmup:
            for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2)):
                totals[key] += dt * 1000 / steps
    return totals


def pipeline_throughput(samples: list[Sample], size: int, cached: bool, epochs: int = 2) -> float:
    """Images/s the training transform delivers (no model): decoded once and reused, or decoded every time."""
    pre = Preprocessing.for_input(size, (0.5,) * 3, (0.5,) * 3)
    ds = ImageDataset(samples, train_transform(pre), cache=cached)
    if cached:
        ds.preload()
    start = time.perf_counter()
    for _ in range(epochs):
        for i in range(len(ds)):
            ds[i]
    return epochs * len(ds) / (time.perf_counter() - start)


def inference_figures(name: str, size: int, batch: int, repeats: int, workdir: Path) -> dict[str, float]:
    """Batch images/s and single-image latency p50/p95 (ms) for PyTorch eager (fp32 and optimised) and ORT."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model, _ = create_model(name, pretrained=False)
    model.eval()
    x = torch.randn(batch, 3, size, size)
    one = x[:1]
    out: dict[str, float] = {}
    bf16 = cpu_has_fast_bf16()
    cl_model = model.to(memory_format=torch.channels_last)

    def eager(inp: torch.Tensor, optimised: bool) -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=optimised and bf16):
            (cl_model if optimised else model.to(memory_format=torch.contiguous_format))(
                inp.contiguous(memory_format=torch.channels_last) if optimised else inp
            )

    out["eager_fp32_batch_ips"] = _rate(lambda: eager(x, False), batch, 1, repeats)
    out["eager_opt_batch_ips"] = _rate(lambda: eager(x, True), batch, 1, repeats)
    model = model.to(memory_format=torch.contiguous_format)
    path = workdir / f"{name.replace(':', '-')}.onnx"
    write_onnx(Scorer(model), size, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    xb, x1 = x.numpy(), one.numpy()
    out["ort_batch_ips"] = _rate(lambda: session.run(None, {"image": xb}), batch, 1, repeats)
    for label, fn in (
        ("eager_fp32", lambda: eager(one, False)),
        ("eager_opt", lambda: eager(one, True)),
        ("ort", lambda: session.run(None, {"image": x1})),
    ):
        fn()
        times = []
        for _ in range(max(5, repeats * 4)):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        out[f"{label}_p50_ms"], out[f"{label}_p95_ms"] = (
            float(np.percentile(times, 50)),
            float(np.percentile(times, 95)),
        )
    return out


def bench_samples(data_dir: str | Path | None, n: int) -> tuple[list[Sample], str]:
    """Real COVID-CT training images when present, else synthetic ones written to a temporary folder."""
    if data_dir and Path(data_dir).is_dir():
        try:
            return load_splits(data_dir).splits["train"][:n], f"COVID-CT train images from {data_dir}"
        except Exception:  # any data problem: fall back to synthetic, and say so
            pass
    import tempfile

    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="covidct-bench-"))
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)).save(path)
        samples.append(Sample(path, i % 2))
    return samples, "synthetic 512x512 PNGs"


def run_bench(models: list[str], quick: bool, data_dir: str | Path | None, workdir: Path) -> dict[str, Any]:
    """Measure everything for each model; returns a JSON-ready dict."""
    size, batch, warmup, steps, repeats, n_images = (64, 4, 1, 1, 2, 8) if quick else (224, 32, 2, 8, 5, 425)
    samples, source = bench_samples(data_dir, n_images)
    peak = cpu_peak_flops()
    results: dict[str, Any] = {
        "quick": quick,
        "input_size": size,
        "batch": batch,
        "images": source,
        "peak": peak,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "pipeline_ips": {
            "decode_every_time": pipeline_throughput(samples, size, cached=False),
            "decoded_once": pipeline_throughput(samples, size, cached=True),
        },
        "models": {},
    }
    for name in models:
        model, _ = create_model(name, pretrained=False)
        flops = forward_flops(model, size)
        del model
        naive = train_throughput(name, size, batch, False, warmup, steps)
        opt = train_throughput(name, size, batch, True, warmup, steps)
        r = {
            "forward_gflops": flops / 1e9,
            "train_naive_ips": naive,
            "train_opt_ips": opt,
            "train_speedup": opt / naive,
        }
        r["train_opt_share_of_peak"] = 3 * flops * opt / (peak["bf16"] if cpu_has_fast_bf16() else peak["fp32"])
        r["train_naive_share_of_fp32_peak"] = 3 * flops * naive / peak["fp32"]
        r.update(train_phase_split(name, size, batch, warmup, steps))
        r["loading_ms"] = 1000 * batch / results["pipeline_ips"]["decoded_once"]  # one batch, one loader process
        r.update(inference_figures(name, size, batch, repeats, workdir))
        results["models"][name] = r
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def bench_markdown(r: dict[str, Any]) -> str:
    p = r["pipeline_ips"]
    lines = [
        f"Input {r['input_size']}px, batch {r['batch']}, {r['threads']} threads, torch {r['torch']}, "
        f"images: {r['images']}{' (quick mode: tiny sizes, figures not comparable)' if r['quick'] else ''}.",
        f"Peak estimate: {r['peak']['cores']} cores x {r['peak']['ghz']:.2f} GHz x {r['peak']['fp32_flops_per_cycle']} "
        f"FLOP/cycle = {r['peak']['fp32'] / 1e9:.0f} GFLOP/s fp32, {r['peak']['bf16'] / 1e9:.0f} GFLOP/s bf16.",
        f"Data pipeline (train transform, no model): {p['decode_every_time']:.0f} img/s decoding every time, "
        f"{p['decoded_once']:.0f} img/s decoded once ({p['decoded_once'] / p['decode_every_time']:.1f}x).",
        f"Peak resident memory: {r['peak_rss_mb']:.0f} MB.",
        "",
        "| model | GFLOP/img | train naive img/s | train opt img/s | speed-up | share of peak (opt) | "
        "infer fp32 img/s | infer opt img/s | ORT img/s | 1-img p50/p95 ms fp32 | opt | ORT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in r["models"].items():
        cells = [
            name,
            f"{m['forward_gflops']:.2f}",
            f"{m['train_naive_ips']:.1f}",
            f"{m['train_opt_ips']:.1f}",
            f"{m['train_speedup']:.2f}x",
            f"{100 * m['train_opt_share_of_peak']:.0f}%",
            f"{m['eager_fp32_batch_ips']:.0f}",
            f"{m['eager_opt_batch_ips']:.0f}",
            f"{m['ort_batch_ips']:.0f}",
        ]
        cells += [f"{m[k + '_p50_ms']:.1f}/{m[k + '_p95_ms']:.1f}" for k in ("eager_fp32", "eager_opt", "ort")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Time per training batch (ms; optimised path; loading = the train transform on decoded images):",
        "",
        "| model | loading | forward | backward | optimizer |",
        "|---|---|---|---|---|",
    ]
    for name, m in r["models"].items():
        parts = [f"{m[k]:.0f}" for k in ("loading_ms", "forward_ms", "backward_ms", "optimizer_ms")]
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"
