"""Numeric precision: when bf16 autocast pays, and the layers that are faster kept in fp32.

On CPUs with AVX512-BF16 (and AMX), bf16 autocast with channels-last memory makes convolution-heavy training
2-5x faster. One exception, measured on this project's CPU (benchmarks/RESULTS.md): oneDNN's bf16 backward of
depthwise convolutions with a 5x5 kernel or a stride of 2 is 2-5x *slower* than fp32 (e.g. 672 channels at 14x14,
5x5, stride 2: 84 ms in bf16 vs 16 ms in fp32 for forward + backward of a batch of 32). `keep_fp32` runs such
layers outside autocast; the other layers stay in bf16.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: where bf16 autocast pays on CPU (measured: benchmarks/RESULTS.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


def resolve_precision(precision: str, accelerator: str) -> str:
    """'auto' -> bf16-mixed on GPUs that support it and on CPUs with fast bf16, else 32-bit."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32"


def slow_in_bf16_on_cpu(module: nn.Module) -> bool:
    """Depthwise convolutions with a kernel of 5 or more or a stride above 1 (slow bf16 backward on CPU)."""
    if not isinstance(module, nn.Conv2d):
        return False
    depthwise = module.groups > 1 and module.groups == module.in_channels
    return depthwise and (max(module.kernel_size) >= 5 or max(module.stride) > 1)


class _Fp32Forward:
    """A module's forward run in fp32 with autocast off; outside autocast it is the forward unchanged."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.forward = forward

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        if not torch.is_autocast_enabled(kind):
            return self.forward(x)
        with torch.autocast(kind, enabled=False):
            return self.forward(x.float())


def keep_fp32(model: nn.Module, select: Callable[[nn.Module], bool] = slow_in_bf16_on_cpu) -> list[str]:
    """Run the selected submodules in fp32 under autocast (in place; weights and state_dict keys unchanged).

    Returns the names of the modules changed. Only the training loop applies this: exported and served models
    are built afresh and are not affected.
    """
    changed = []
    for name, module in model.named_modules():
        if select(module) and not isinstance(module.forward, _Fp32Forward):
            module.forward = _Fp32Forward(module.forward)
            changed.append(name)
    return changed
