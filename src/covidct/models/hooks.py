"""One utility for reading what a network computes inside (as timm's FeatureHooks): `activations` collects what a
module reads or gives in each forward pass while the block is open, `output_replaced` feeds a module's output in
from outside, and `run_over` runs a network over a dataset batch by batch in eval mode. The out-of-distribution
detector's taps (ood/features.py, FeatureTaps) are the one other kind: installed for good and read per thread,
for a server that scores requests in parallel threads on one network."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@contextmanager
def activations(module: nn.Module, at: Literal["input", "output"] = "output") -> Iterator[list[torch.Tensor]]:
    """Within the block, what `module` reads (its first input) or gives (its output) in each forward pass is
    appended to the list yielded, detached, as float32 on the CPU; the hook is removed on leaving."""
    seen: list[torch.Tensor] = []

    def keep(x: torch.Tensor) -> None:
        seen.append(x.detach().float().cpu())

    if at == "input":
        hook = module.register_forward_pre_hook(lambda _m, inputs: keep(inputs[0]))
    else:
        hook = module.register_forward_hook(lambda _m, _inputs, output: keep(output))
    try:
        yield seen
    finally:
        hook.remove()


@contextmanager
def output_replaced(module: nn.Module, value: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Within the block, `module`'s output is `value()` instead of what it computes: a network run from cached
    inputs of a later stage (adaptation/tail.py)."""
    hook = module.register_forward_hook(lambda _m, _inputs, _output: value())
    try:
        yield
    finally:
        hook.remove()


@torch.no_grad()
def run_over(
    net: nn.Module, dataset: Dataset, batch_size: int = 32, forward: Callable[[torch.Tensor], Any] | None = None
) -> Iterator[tuple[dict[str, Any], Any]]:
    """(batch, the network's output, or `forward`'s of the batch's images) for every batch of `dataset` in order, in
    eval mode without gradients, the images moved to the network's device; the network's mode is restored after."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
            yield batch, (forward or net)(batch["image"].to(device))
    finally:
        net.train(was_training)
