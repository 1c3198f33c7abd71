"""Resume after interruption, atomic checkpoints, graceful stops (issue 7)."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from covidct.config import TrainConfig
from covidct.errors import ConfigError, TrainingInterrupted
from covidct.training.callbacks import EpochHistory
from covidct.training.engine import AtomicCheckpointIO, resume_point
from covidct.training.fit import train
from tests.conftest import TINY_COUNTS, make_covidct_layout


def _config(data_dir, out, **kw) -> TrainConfig:
    base = dict(
        model="timm:resnet10t",
        data_dir=str(data_dir),
        pretrained=False,
        batch_size=4,
        lr=1e-3,
        num_workers=0,
        out=str(out),
        patience=50,
        tensorboard=False,
    )
    return TrainConfig(**{**base, **kw})


def _epochs(run_dir) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_atomic_checkpoint_keeps_the_old_file_when_a_write_dies(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_half_way(obj, f, *a, **k):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_interrupted_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, monkeypatch):
    data = make_covidct_layout(tmp_path / "d", TINY_COUNTS)
    straight = train(_config(data, tmp_path / "a", epochs=4), progress=False)

    original = EpochHistory.on_train_epoch_end

    def stop_during_epoch_3(self, trainer, module):
        original(self, trainer, module)
        if trainer.current_epoch == 2:  # epoch 3's row is written, its checkpoint is not: the worst moment
            raise KeyboardInterrupt

    monkeypatch.setattr(EpochHistory, "on_train_epoch_end", stop_during_epoch_3)
    run = tmp_path / "b" / "run"
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(_config(data, tmp_path / "b", epochs=4), progress=False, run_dir=run)
    monkeypatch.undo()
    assert _epochs(run) == [1, 2, 3] and resume_point(run)[1] == 2
    train(_config(data, tmp_path / "b", epochs=4), progress=False, run_dir=run, resume=True)
    assert _epochs(run) == [1, 2, 3, 4]  # epoch 3 redone once: no gap, no duplicate
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_resume_needs_a_finished_epoch(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match=r"no checkpoints/last\.ckpt"):
        resume_point(tmp_path)


def _start(args, tmp_path):
    env = {**os.environ, "COVIDCT_NO_PROGRESS": "1"}
    log = open(tmp_path / "train.out", "w")  # noqa: SIM115 - closed by the caller's process end
    return subprocess.Popen([sys.executable, "-m", "covidct", "train", *args], stdout=log, stderr=log, env=env)


def _kept_epochs(run) -> int:
    """Epochs in checkpoints/last.ckpt, 0 while there is none (or it is being written)."""
    try:
        return resume_point(run)[1]
    except Exception:
        return 0


def _wait_for_epochs(run, proc, n: int, timeout: float = 120) -> None:
    """Until n epochs are logged and kept in last.ckpt: the log row comes before the checkpoint is written, and a
    signal between the two found last.ckpt one epoch behind (a slow machine made that window common)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.csv").is_file() and len(_epochs(run)) >= n and _kept_epochs(run) >= n:
            return
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    pytest.fail(f"no {n} epochs within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killed_training_resumes_from_the_command_line(tmp_path, how):
    data = make_covidct_layout(tmp_path / "d", {**TINY_COUNTS, "train": {"COVID": 16, "NonCOVID": 16}})
    run = tmp_path / "run"
    args = [
        "--model",
        "timm:resnet10t",
        "--no-pretrained",
        "--data-dir",
        str(data),
        "--epochs",
        "6",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--patience",
        "50",
        "--run-dir",
        str(run),
    ]
    proc = _start(args, tmp_path)
    _wait_for_epochs(run, proc, 2)
    time.sleep(0.3)  # somewhere inside a later epoch
    proc.send_signal(how)
    code = proc.wait(timeout=60)
    output = (tmp_path / "train.out").read_text()
    if how == signal.SIGTERM:  # graceful: says how to go on
        assert code == 130 and f"covidct train --resume {run}" in output, output
    else:
        assert code == -signal.SIGKILL, output
    last, done = resume_point(run)  # the kept checkpoint loads
    assert torch.load(last, weights_only=True)["epoch"] == done - 1
    # the signal landed mid-run: epochs were left to do and the run had not written its summary
    assert 2 <= done < 6 and not (run / "summary.json").exists(), (done, output)
    resumed = subprocess.run(
        [sys.executable, "-m", "covidct", "train", "--resume", str(run)], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _epochs(run) == list(range(1, 7))
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert "state_dict" in best and (run / "summary.json").is_file()
