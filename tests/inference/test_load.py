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
