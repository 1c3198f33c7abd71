"""Fine-tuning a network's last stages and head on cached inputs: the fine-tuning half of LP-FT for `covidct adapt`.

A learning curve adapts the model 25 times (5 values of k x 5 draws); fine-tuning the whole network each time costs
minutes per draw on a CPU. Everything before the last TAIL_STAGES stages is frozen, so its output is computed once
per image and cached; each draw then trains only the last stages, the layers after them and the head on those cached
maps (for efficientnet_lite0 at 224 px: 112 x 14 x 14 per image, about a fifth of the network's work). The cached map
is fed in by a forward hook that replaces the output of the stage before them, so the network's own forward runs the
rest and any backbone with stages (declared where it is registered: covidct.models.backbone_stages) works; the
layers before it see a 1-image dummy.

Why a plain loop and not the Lightning engine: this fits a few hundred cached tensors for a few epochs inside one
command, like fit_head's scikit-learn regression; there is no run folder, checkpoint or resume to manage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from covidct.models import backbone_stages, head_module
from covidct.models.head import fit_head, score_of, set_linear_head
from covidct.models.hooks import activations, output_replaced, run_over

TAIL_STAGES = 2  # the last stages fine-tuned (with everything after them); 1 and 2 measured: ADAPTATION.md
TAIL_EPOCHS = 8  # measured on the curve's draws: benchmarks/ADAPTATION.md
TAIL_LR = 1e-4  # AdamW; the head starts from the linear probe, so a small step keeps what it learned
TAIL_BATCH = 32
TAIL_WEIGHT_DECAY = 1e-4


@dataclass(frozen=True)
class TailSchedule:
    """How long and how fast the tail is fine-tuned: AdamW epochs over the cached maps, and its learning rate."""

    epochs: int = TAIL_EPOCHS
    lr: float = TAIL_LR


def cut_stage(net: nn.Module) -> nn.Module:
    """The stage whose output is cached: the one before the TAIL_STAGES fine-tuned."""
    parts = backbone_stages(net)
    if len(parts) < TAIL_STAGES + 1:
        from covidct.errors import ModelError

        raise ModelError(
            f"{type(net).__name__}: {len(parts)} stages; its last {TAIL_STAGES} cannot be fine-tuned alone"
        )
    return parts[-TAIL_STAGES - 1]


def cached_inputs(net: nn.Module, dataset: Dataset, batch_size: int = 32) -> torch.Tensor:
    """The cut stage's output (N x C x H x W, float32) for every item of `dataset`, eval mode, one pass."""
    with activations(cut_stage(net), "output") as seen:
        for _ in run_over(net, dataset, batch_size):
            pass
    return torch.cat(seen) if seen else torch.zeros(0)


@contextmanager
def fed_at_cut(net: nn.Module) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Within the block, `run(maps)` gives the network's logits for cached maps of the cut stage."""
    state: dict[str, torch.Tensor] = {}
    size = 32  # the smallest input every registered backbone takes (stride 32)
    dummy = torch.zeros(1, 3, size, size)

    def run(maps: torch.Tensor) -> torch.Tensor:
        state["maps"] = maps
        return net(dummy)

    with output_replaced(cut_stage(net), lambda: state["maps"]):
        yield run


@torch.no_grad()
def outputs(net: nn.Module, maps: torch.Tensor, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(what the head reads, N x D: the linear probe's input; probability of the positive class) for cached maps,
    eval mode, one pass."""
    net.eval()
    out = []
    with activations(head_module(net), "input") as seen, fed_at_cut(net) as run:
        for start in range(0, len(maps), batch_size):
            out.append(score_of(run(maps[start : start + batch_size])).numpy())
    if not out:
        return np.zeros((0, getattr(head_module(net), "in_features", 0))), np.zeros(0)
    return torch.cat(seen).numpy(), np.concatenate(out)


def scores(net: nn.Module, maps: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Probability of the positive class for cached maps (eval mode)."""
    return outputs(net, maps, batch_size)[1]


def tail_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters a tail fine-tune changes: those of the last stages and after them. Every module before the
    first of them (in the network's own order, which lists a stage's parts inside it) is left alone."""
    modules = list(net.modules())
    before = modules[1 : modules.index(backbone_stages(net)[-TAIL_STAGES])]
    skip = {id(p) for m in before for p in m.parameters(recurse=False)}
    return [p for p in net.parameters() if id(p) not in skip]


def fine_tune_tail(
    net: nn.Module,
    maps: torch.Tensor,
    labels: np.ndarray,
    seed: int = 0,
    schedule: TailSchedule = TailSchedule(),
    pooled: np.ndarray | None = None,
) -> nn.Module:
    """LP-FT on cached maps, in place: the head set by a logistic regression on the pooled features (the linear
    probe), then the last stages, the layers after them and the head trained with AdamW on a class-balanced
    cross-entropy. Batch norm stays in eval mode (a few hundred images cannot re-estimate its statistics).
    pooled: what the head reads for these maps, when the caller has it already (the curve computes it once per
    site, not once per draw)."""
    w, b = fit_head(outputs(net, maps)[0] if pooled is None else pooled, labels, standardise=False)
    set_linear_head(head_module(net), w, b)
    y = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(y, minlength=2).clamp_min(1).float()
    loss_fn = nn.CrossEntropyLoss(weight=counts.sum() / (2 * counts))
    params = tail_parameters(net)
    opt = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=TAIL_WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(seed)
    net.eval()
    with fed_at_cut(net) as run:
        for _ in range(schedule.epochs):
            order = torch.randperm(len(y), generator=gen)
            for start in range(0, len(y), TAIL_BATCH):
                idx = order[start : start + TAIL_BATCH]
                opt.zero_grad(set_to_none=True)
                loss_fn(run(maps[idx]), y[idx]).backward()
                opt.step()
    return net
