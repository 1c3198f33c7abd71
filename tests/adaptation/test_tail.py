"""LP-FT's fine-tuning of the last stage on cached inputs (covidct.adaptation.tail), on a small network and images:
the cached path computes what the network computes, only the last stage and after change, and it learns."""

import numpy as np
import torch
from torch.utils.data import Dataset

from covidct.adaptation import tail
from covidct.models import create_model, head_module
from covidct.models.head import head_inputs


class Images(Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i]}


def net_and_images(n: int = 24, size: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    net = create_model("efficientnet_lite0", pretrained=False)[0].eval()
    labels = np.arange(n) % 2
    x = torch.randn(n, 3, size, size) * 0.3
    x[labels == 1, :, : size // 2] += 1.5  # the positive class: a bright top half
    return net, x, labels


def test_scores_from_cached_maps_equal_the_networks_own_scores():
    net, x, _ = net_and_images(n=10)
    maps = tail.cached_inputs(net, Images(x), batch_size=4)
    assert maps.shape[0] == 10 and maps.dim() == 4
    with torch.no_grad():
        direct = net(x).softmax(1)[:, 1].numpy()
    np.testing.assert_allclose(tail.scores(net, maps, batch_size=3), direct, atol=1e-5)
    pooled, scores = tail.outputs(net, maps, batch_size=4)
    np.testing.assert_allclose(pooled, head_inputs(net, head_module(net), Images(x)), atol=1e-5)
    np.testing.assert_allclose(scores, direct, atol=1e-5)


def test_fine_tuning_changes_only_the_last_stages_and_after_and_learns_the_site():
    net, x, labels = net_and_images()
    maps = tail.cached_inputs(net, Images(x))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tail.fine_tune_tail(net, maps, labels, seed=0, schedule=tail.TailSchedule(epochs=15, lr=1e-3))
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    tuned = (*[f"blocks.{6 - i}." for i in range(tail.TAIL_STAGES)], "conv_head.", "bn2.", "classifier.")
    assert changed and all(k.startswith(tuned) for k in changed), changed
    assert any(k.startswith(tuned[tail.TAIL_STAGES - 1]) for k in changed) and "classifier.weight" in changed
    s = tail.scores(net, maps)
    assert s[labels == 1].min() > s[labels == 0].max()  # separates what it was fitted on


def test_the_same_seed_fine_tunes_the_same_network():
    net, x, labels = net_and_images(n=12)
    maps = tail.cached_inputs(net, Images(x))
    import copy

    short = tail.TailSchedule(epochs=2)
    a = tail.scores(tail.fine_tune_tail(copy.deepcopy(net), maps, labels, seed=3, schedule=short), maps)
    b = tail.scores(tail.fine_tune_tail(copy.deepcopy(net), maps, labels, seed=3, schedule=short), maps)
    np.testing.assert_array_equal(a, b)
    assert head_module(net) is not None
