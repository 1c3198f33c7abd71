"""The linear head fitted on frozen features (adaptation, and LP-FT's linear probe before fine-tuning)."""

import numpy as np
import pytest
import torch

from covidct.data import ImageDataset, eval_transform, load_splits
from covidct.models import create_model, head_module
from covidct.models.head import fit_head, head_inputs, head_scores, set_linear_head
from covidct.training.fit import lp_ft_head
from tests.conftest import make_covidct_layout


def separable(n: int = 60, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, d)) + 1.5 * y[:, None] * np.eye(d)[0]
    return x, y


@pytest.mark.parametrize("standardise", [True, False])
def test_the_fitted_head_separates_and_scores_as_its_linear_form(standardise):
    x, y = separable()
    w, b = fit_head(x, y, standardise=standardise)
    s = head_scores(w, b, x)
    assert s[y == 1].mean() > s[y == 0].mean() + 0.2
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-(x @ w + b))), rtol=1e-12)


def test_folding_keeps_raw_weights_small_only_without_standardisation():
    """A nearly constant feature gets a huge raw weight when standardisation is folded back: the reason LP-FT fits
    raw features (a head that is fine-tuned must not blow up when that feature moves)."""
    x, y = separable()
    x[:, 5] = 1.0 + 1e-7 * np.random.default_rng(1).normal(size=len(x))
    folded, _ = fit_head(x, y, standardise=True)
    raw, _ = fit_head(x, y, standardise=False)
    assert abs(folded[5]) > 1e3 * abs(raw[5])


def test_a_regression_written_into_the_head_gives_its_scores_through_softmax():
    head = torch.nn.Linear(8, 2)
    x, y = separable()
    w, b = fit_head(x, y)
    set_linear_head(head, w, b)
    with torch.no_grad():
        p = head(torch.as_tensor(x, dtype=torch.float32)).softmax(1)[:, 1].numpy()
    np.testing.assert_allclose(p, head_scores(w, b, x), atol=1e-5)


def test_the_linear_probe_fits_the_head_on_the_training_images(tmp_path):
    root = make_covidct_layout(
        tmp_path / "data",
        {
            "train": {"COVID": 10, "NonCOVID": 10},
            "val": {"COVID": 2, "NonCOVID": 2},
            "test": {"COVID": 2, "NonCOVID": 2},
        },
    )
    samples = load_splits(root).splits["train"]
    torch.manual_seed(0)
    model, pre = create_model("timm:resnet10t", pretrained=False)
    pre = pre.with_input_size(32)
    head = head_module(model)
    lp_ft_head(model, samples, pre)
    assert torch.count_nonzero(head.weight[0]) == 0 and torch.count_nonzero(head.weight[1]) > 0
    x = head_inputs(model, head, ImageDataset(samples, eval_transform(pre)))
    y = np.array([s.label for s in samples])
    w, b = head.weight[1].detach().double().numpy(), float(head.bias[1].detach())
    scores = head_scores(w, b, x)
    assert x.shape == (20, head.in_features) and scores[y == 1].mean() > scores[y == 0].mean()
