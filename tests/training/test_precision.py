import copy

import pytest
import torch
from torch import nn

from covidct.training.precision import keep_fp32, resolve_precision, slow_in_bf16_on_cpu


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # dense: stays under autocast
        nn.Conv2d(8, 8, 5, padding=2, groups=8),  # depthwise 5x5: fp32
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # depthwise stride 2: fp32
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise 3x3 stride 1: stays
    )


def test_selects_only_slow_depthwise_convolutions() -> None:
    assert [slow_in_bf16_on_cpu(m) for m in _net()] == [False, True, True, False]
    assert not slow_in_bf16_on_cpu(nn.Linear(2, 2))


def test_keep_fp32_runs_selected_layers_in_fp32_and_keeps_weights() -> None:
    torch.manual_seed(0)
    net = _net()
    before = copy.deepcopy(net.state_dict())
    assert keep_fp32(net) == ["1", "2"]
    assert keep_fp32(net) == []  # idempotent
    assert list(net.state_dict()) == list(before)
    dtypes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: dtypes.__setitem__(n, o.dtype)) for n, m in enumerate(net)]
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x).float().sum().backward()
    for h in hooks:
        h.remove()
    assert dtypes == {0: torch.bfloat16, 1: torch.float32, 2: torch.float32, 3: torch.bfloat16}
    assert all(p.grad is not None for p in net.parameters())
    # Outside autocast the forward is the original one: same output as an untouched copy.
    plain = _net()
    plain.load_state_dict(before)
    torch.testing.assert_close(net(x), plain(x))


def test_keep_fp32_survives_deepcopy() -> None:
    net = _net()
    keep_fp32(net)
    clone = copy.deepcopy(net)  # what weight averaging does
    with torch.no_grad():
        clone[1].weight.zero_()
    x = torch.randn(1, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.equal(clone(x), net(x))  # the copy's forward uses the copy's weights


@pytest.mark.parametrize("given", ["32", "bf16-mixed", "16-mixed"])
def test_explicit_precision_is_kept(given: str) -> None:
    assert resolve_precision(given, "cpu") == given
