"""Nothing read from a run folder runs code: a checkpoint carrying a pickled payload is refused with a clear error by
every command that reads one, and nothing already written is changed. And one threshold record: a threshold chosen
after an export is the one predict uses."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covidct.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


class Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(ckpt: Path, marker: Path) -> None:
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    saved["hyper_parameters"]["payload"] = Payload(marker)
    torch.save(saved, ckpt)


def test_no_unsafe_torch_load_in_src():
    found = subprocess.run(["grep", "-rn", "weights_only=False", str(SRC)], capture_output=True, text=True).stdout
    assert found == ""


COMMANDS = {
    "threshold": lambda run, tmp: ["threshold", str(run), "--choose", "0.3"],
    "evaluate": lambda run, tmp: ["evaluate", str(run), "--split", "test", "--bootstrap", "0"],
    "export": lambda run, tmp: ["export", str(run), "--out", str(tmp / "export")],
    "predict": lambda run, tmp: ["predict", str(run), str(tmp / "x.png"), "--out", str(tmp / "p.csv")],
    "report": lambda run, tmp: ["report", str(run)],
    "compare": lambda run, tmp: ["compare", str(run), "--out", str(tmp / "cmp")],
    "ood fit": lambda run, tmp: ["ood", "fit", str(run)],
    "resume": lambda run, tmp: ["train", "--resume", str(run)],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_pickled_payload_never_runs(command, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "payload-ran"
    for which in ("best", "last"):
        plant(run / "checkpoints" / f"{which}.ckpt", marker)
    from PIL import Image

    Image.new("RGB", (48, 40), 90).save(tmp_path / "x.png")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code = main(COMMANDS[command](run, tmp_path))
    err = capsys.readouterr().err
    assert not marker.exists(), f"{command}: the payload ran"
    if command != "compare":  # compare reads metrics files only, never a checkpoint: it may succeed
        assert code == 2 and "covidct: error:" in err and "cannot be read safely: it holds pickled" in err, err
    changed = [p for p in before if not p.exists() or p.read_bytes() != before[p]]
    assert changed == [], f"{command} changed {changed}"


def test_a_threshold_chosen_after_export_is_the_one_predict_and_serve_use(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    from PIL import Image

    Image.new("RGB", (48, 40), 90).save(tmp_path / "x.png")
    assert main(["export", str(run)]) == 0
    assert main(["threshold", str(run), "--choose", "0.2"]) == 0
    from covidct.inference.load import load_trained

    assert load_trained(run).threshold == 0.2  # the run folder, through its export
    assert load_trained(run / "export").threshold == 0.2  # the export itself, rewritten
    assert main(["predict", str(run), str(tmp_path / "x.png"), "--out", str(tmp_path / "p.csv")]) == 0
    assert float(next(csv.DictReader((tmp_path / "p.csv").open()))["threshold"]) == 0.2


def test_a_payload_in_init_weights_never_runs(tmp_path):
    """--init reads a pretraining run's weights: the same safe reading (a separate process: nothing leaks)."""
    marker = tmp_path / "payload-ran"
    init = tmp_path / "pre"
    (init / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "payload": Payload(marker)}, init / "checkpoints" / "last.ckpt")
    code = (
        "import sys; from covidct.training.pretrain import load_init; from covidct.models import create_model\n"
        f"m, _ = create_model('timm:resnet10t', pretrained=False)\n"
        f"try:\n    load_init(m, 'timm:resnet10t', {str(init)!r})\n"
        "except Exception as e:\n    print(type(e).__name__, e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}).stdout
    assert not marker.exists() and "Error" in out
