"""Training-step throughput of a backbone under each precision / memory-format combination.

Random weights and random 224x224 inputs (model compute only, no data loading): this isolates what
`--precision auto`, channels-last and `--fp32-slow-layers` buy. Usage:
    .venv/bin/python benchmarks/train_speed.py --models efficientnet_lite0 vgg19_bn --batch-size 32
"""

from __future__ import annotations

import argparse

import torch

from covidct.studies.bench import StepSetup, train_step_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| model | fp32 | fp32 + channels_last | bf16 | bf16 + channels_last | "
        "bf16 + channels_last + fp32 slow layers | best / fp32 |"
    )
    print("|---|---|---|---|---|---|---|")
    combos = (
        (False, False, False),
        (False, True, False),
        (True, False, False),
        (True, True, False),
        (True, True, True),
    )
    for name in args.models:
        r = [
            train_step_rate(StepSetup(name, 224, args.batch_size, bf16, cl, slow), args.warmup, args.steps)
            for bf16, cl, slow in combos
        ]
        cells = " | ".join(f"{v:.1f}" for v in r)
        print(f"| {name} | {cells} | {max(r) / r[0]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
