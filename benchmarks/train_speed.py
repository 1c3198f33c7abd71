"""Training-step throughput of a backbone under each precision / memory-format combination.

Random weights and random 224x224 inputs (model compute only, no data loading): this isolates what
`--precision auto` and channels-last buy. Usage:
    .venv/bin/python benchmarks/train_speed.py --models efficientnet_lite0 vgg19_bn --batch-size 32
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from covidct.models import create_model


def images_per_second(name: str, bf16: bool, channels_last: bool, batch: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model, pre = create_model(name, pretrained=False)
    model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, pre.input_size, pre.input_size).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | fp32 | fp32 + channels_last | bf16 | bf16 + channels_last | best / fp32 |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        r = [
            images_per_second(name, bf16, cl, args.batch_size, args.steps, args.warmup)
            for bf16, cl in ((False, False), (False, True), (True, False), (True, True))
        ]
        cells = " | ".join(f"{v:.1f}" for v in r)
        print(f"| {name} | {cells} | {max(r) / r[0]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
