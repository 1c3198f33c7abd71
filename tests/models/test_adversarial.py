"""Gradient reversal and its schedule (domain-adversarial training)."""

import itertools

import pytest
import torch
from torch import nn

from covidct.models.adversarial import DomainHead, reversal_strength, reverse_gradient


def test_reversal_is_the_identity_forwards_and_negates_the_gradient_backwards():
    x = torch.randn(4, 3, requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.5 * torch.arange(3.0).expand(4, 3))


def test_schedule_starts_at_zero_and_rises_to_one():
    values = [reversal_strength(p / 10) for p in range(11)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(1.0, abs=1e-4)
    assert all(a < b for a, b in itertools.pairwise(values))
    assert reversal_strength(0.1) == pytest.approx(2 / (1 + torch.e**-1) - 1)
    assert reversal_strength(-1) == 0.0 and reversal_strength(3) == reversal_strength(1)


def _train(domain_weight: float, steps: int = 1000) -> torch.Tensor:
    """A linear 'backbone' over (disease signal, source signal); returns its weights after training."""
    g = torch.Generator().manual_seed(0)
    n = 256
    disease = torch.randint(0, 2, (n,), generator=g)
    source = torch.randint(0, 2, (n,), generator=g)
    x = torch.stack([disease * 2.0 - 1, source * 2.0 - 1], 1) + 0.3 * torch.randn(n, 2, generator=g)
    torch.manual_seed(0)
    backbone, classifier, domain = nn.Linear(2, 4), nn.Linear(4, 2), DomainHead(4, 2, hidden=8)
    params = [*backbone.parameters(), *classifier.parameters(), *domain.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(steps):
        f = backbone(x)
        loss = nn.functional.cross_entropy(classifier(f), disease)
        loss = loss + domain_weight * nn.functional.cross_entropy(domain(f, 1.0), source)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return backbone.weight.detach()


def test_the_reversed_domain_loss_drives_the_source_out_of_the_features():
    plain, adversarial = _train(0.0), _train(1.0)
    share = lambda w: (w[:, 1].norm() / w[:, 0].norm()).item()  # noqa: E731  source column vs disease column
    assert share(adversarial) < 0.5 * share(plain)
