"""torch.compile vs eager for one efficientnet_lite0 training step (bf16 autocast, channels-last, batch 32).

Usage: .venv/bin/python benchmarks/compile_probe.py
"""

import time

import torch
import torch.nn.functional as F

from covidct.models import create_model

torch.manual_seed(0)
model, _ = create_model("efficientnet_lite0", pretrained=False)
model = model.to(memory_format=torch.channels_last).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 2, (32,))
cm = torch.compile(model)


def step(m):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(m(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


for name, m in [("eager", model), ("compiled", cm)]:
    t = time.perf_counter()
    step(m)
    print(name, "first step", round(time.perf_counter() - t, 1), "s", flush=True)
    step(m)
    t = time.perf_counter()
    for _ in range(4):
        step(m)
    print(name, round(128 / (time.perf_counter() - t), 1), "img/s", flush=True)
