"""The one loader of trained models refuses pickled code: a checkpoint is read with weights_only, so an object
whose unpickling would run something is rejected with a message, and never run."""

from pathlib import Path

import pytest
import torch

from covidct.errors import ModelError
from covidct.inference.load import load_trained


class _Payload:
    """Unpickling this would create the marker file (a stand-in for any code an attacker chooses)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    hp = {"model_name": "timm:resnet10t", "preprocessing": {}, "class_names": ["a", "b"]}
    ckpt = {"state_dict": {"model.w": torch.zeros(1)}, "epoch": 0, "extra": _Payload(marker), "hyper_parameters": hp}
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    assert not marker.exists()
    with pytest.raises(ModelError, match=r"best\.ckpt cannot be read safely"):
        load_trained(run)
    with pytest.raises(ModelError, match=r"cannot be read safely"):
        load_trained(run / "checkpoints" / "best.ckpt")
    assert not marker.exists()  # the payload never ran
    # the same file through plain pickle would have run it: the test's payload is real
    torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    assert marker.exists()


class _Recorder(torch.nn.Module):
    """Parameters on `device`; records where its input arrived and answers on the CPU."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, device=device))
        self.seen: list[torch.device] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.device)
        return torch.zeros(len(x), 2)


def test_inputs_follow_the_network_to_its_device_and_scores_come_back_on_the_cpu():
    from covidct.data.preprocessing import Preprocessing
    from covidct.inference.loaded import LoadedModel
    from covidct.runs.model_card import ModelCard

    card = ModelCard("recorder", Preprocessing.for_input(4), ["NonCOVID", "COVID"], 0.5)

    module = _Recorder("cpu")
    model = LoadedModel(card=card, module=module)
    assert model.to("meta") is model  # "meta": a device that exists without a GPU
    assert module.w.device.type == "meta"
    out = model.score_batch(torch.ones(3, 1, 4, 4), False)[0]
    assert module.seen[-1].type == "meta"  # the batch was moved to the network, not the other way round
    assert out.device.type == "cpu" and out.shape == (3,)
    on_cpu = _Recorder("cpu")
    LoadedModel(card=card, module=on_cpu).score_batch(torch.ones(1, 1, 4, 4), False)
    assert on_cpu.seen[-1].type == "cpu"


def test_a_cut_empty_or_random_checkpoint_says_what_the_file_is(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(500)}}, good)
    whole = good.read_bytes()
    files = {"cut.ckpt": whole[: len(whole) // 2], "empty.ckpt": b"", "random.ckpt": bytes(range(256)) * 20}
    expected = {
        "cut.ckpt": "is truncated or damaged",
        "empty.ckpt": "is empty (0 bytes)",
        "random.ckpt": "is not a PyTorch checkpoint",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelError) as e:
            load_trained(tmp_path / name)
        assert f"{name} {expected[name]}" in str(e.value) and "EOFError" not in str(e.value)
        assert "pickled" not in str(e.value)
