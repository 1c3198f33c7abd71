"""The ImageNet probe in a run, as training, evaluation and export compute it: a run that starts from pretrained
weights gets one, its scores are the blend of the fine-tuned network and the starting network's features, the stored
operating point is chosen on the blended validation scores, and the exports score the same."""

from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.data import load_rgb
from covidct.evaluation.metrics import youden_threshold
from covidct.inference.export import export_run
from covidct.inference.load import load_trained
from covidct.models import backbone_stages as stages
from covidct.runs import RunDir
from tests.conftest import TINY_COUNTS, make_covidct_layout, starting_weights


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run from a 'pretrained' starting network (a weight file), and that file."""
    from covidct.config import TrainConfig
    from covidct.training.fit import train

    root = tmp_path_factory.mktemp("probe")
    data = make_covidct_layout(root / "covid-ct", TINY_COUNTS)
    weights = starting_weights(root / "start.safetensors")
    config = TrainConfig(
        model="timm:resnet10t",
        data_dir=str(data),
        pretrained=False,
        weights=str(weights),
        epochs=1,
        batch_size=8,
        num_workers=0,
        out=str(root / "runs"),
        precision="32",
        input_size=64,
        fold_probe=False,  # the two-network model itself (the probe folded into one network: test_distill.py)
    )
    return train(config, progress=False), weights


def starting_network_features(weights: Path, x: torch.Tensor) -> torch.Tensor:
    """The last four stages' channel means of the network in the weight file, computed here without covidct."""
    import timm
    from safetensors.torch import load_file

    net = timm.create_model("resnet10t")
    net.load_state_dict(load_file(str(weights)))
    seen: list[torch.Tensor] = []
    for stage in stages(net)[-4:]:
        stage.register_forward_hook(lambda _m, _i, out: seen.append(out.mean((2, 3))))
    with torch.no_grad():
        net.eval()(x)
    return torch.cat(seen, 1)


def test_scores_blend_the_network_and_the_starting_networks_features(probe_run):
    run_dir, weights = probe_run
    run = RunDir(run_dir)
    model = load_trained(run_dir)
    assert model.probe is not None and model.card.imagenet_probe["share"] == 0.25
    assert model.heat_map_explains.startswith("the fine-tuned network alone (75% of the score's log-odds")
    images = [load_rgb(s.path) for s in run.data().splits["val"]]
    x = model.tensor(images)
    with torch.no_grad():
        logits = model.module(x).double()
        z = model.probe.linear(starting_network_features(weights, x)).squeeze(1).double()
    want = torch.sigmoid(0.75 * (logits[:, 1] - logits[:, 0]) + 0.25 * z).numpy()
    np.testing.assert_allclose(model.score_images(images, check=False)[0], want, rtol=1e-4, atol=1e-5)
    with_check, ood = model.score_images(images)  # predict and serve: the same pass gives the detector's features
    assert ood is not None and len(ood) == len(images)
    np.testing.assert_allclose(with_check, want, rtol=1e-4, atol=1e-5)
    # the operating point is Youden's J on the blended validation scores: the probe is fitted before it
    labels = np.array([s.label for s in run.data().splits["val"]])
    assert run.threshold_record().threshold == pytest.approx(youden_threshold(labels, want), abs=1e-4)


def test_exports_score_as_the_run(probe_run, tmp_path):
    run_dir, _ = probe_run
    images = [load_rgb(s.path) for s in RunDir(run_dir).data().splits["test"]]
    want = load_trained(run_dir).score_images(images, check=False)[0]
    export_run(run_dir, "safetensors", tmp_path / "e")
    assert (tmp_path / "e" / "imagenet_probe.json").is_file()
    safetensors = load_trained(tmp_path / "e" / "model.safetensors")
    np.testing.assert_allclose(safetensors.score_images(images, check=False)[0], want, atol=1e-6)
    export_run(run_dir, "onnx", tmp_path / "o")
    onnx_only = load_trained(tmp_path / "o" / "model.onnx")  # no probe files beside it: the graph has the blend
    assert onnx_only.session is not None and onnx_only.card.imagenet_probe["share"] == 0.25
    np.testing.assert_allclose(onnx_only.score_images(images, check=False)[0], want, atol=1e-4)


def test_a_run_from_random_weights_has_no_probe(trained_run):
    assert not RunDir(trained_run).probe_dir.exists() and load_trained(trained_run).probe is None
