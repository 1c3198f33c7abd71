"""RunDir: one object for a run folder and everything in it (config, summary, history, checkpoints, evaluations,
export), so no other module spells out the layout.

    runs/<timestamp>-<model>/
      config.yaml  summary.json  metrics.csv  train.log  checkpoints/{best,last}.ckpt
      eval-<name>/metrics.json ...  export/model.json ...  report.html
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct.config import TrainConfig
from covidct.config.base import read_yaml
from covidct.errors import ConfigError, ModelError
from covidct.fileio import read_csv, read_json, write_json, write_text
from covidct.fileio.cards import read_json_card
from covidct.runs.operating_point import OperatingPoint
from covidct.runs.records import EvaluationRecord, SummaryRecord


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def at(cls, path: str | Path) -> RunDir:
        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"run folder {path} does not exist")
        return cls(path)

    @property
    def name(self) -> str:
        return self.path.name

    def create(self, config_text: str, exist_ok: bool = False) -> None:
        """Make the folder and write its config.yaml (a fresh run; a resumed one exists already)."""
        self.path.mkdir(parents=True, exist_ok=exist_ok)
        write_text(self.config_path, config_text)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_path(self) -> Path:
        """metrics.csv: one row per epoch."""
        return self.path / "metrics.csv"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def val_last_epoch_path(self) -> Path:
        """val_last_epoch.csv: every validation image's score as the last epoch gave it."""
        return self.path / "val_last_epoch.csv"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    @property
    def audit_dir(self) -> Path:
        return self.path / "audit"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_path(self, which: str = "best") -> Path:
        """checkpoints/<which>.ckpt, whether it exists or not (checkpoint() checks)."""
        return self.checkpoints_dir / f"{which}.ckpt"

    @property
    def backbone_path(self) -> Path:
        """A pretraining run's backbone weights (covidct pretrain; `covidct train --init RUN` reads them)."""
        return self.path / "backbone.safetensors"

    def scores_path(self, source: str) -> Path:
        """scores-<source>.csv: every image of a source as `covidct crosssource` scored it with this run's model."""
        return self.path / f"scores-{source}.csv"

    def artifacts(self) -> list[Path]:
        """The run's own files worth keeping beside it in a tracker (MLflow), those that exist."""
        files = [
            self.config_path,
            self.metrics_path,
            self.summary_path,
            self.log_path,
            self.val_last_epoch_path,
            self.report_path,
        ]
        return [f for f in files if f.is_file()]

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def config(self) -> TrainConfig:
        if not self.config_path.is_file():
            raise ModelError(f"run folder {self.path} has no config.yaml; is it a covidct run folder?")
        return TrainConfig.from_yaml(self.config_path)

    def raw_config(self) -> dict[str, Any]:
        """config.yaml as it was saved, not checked against today's fields (a field an older version did not have
        shows as missing, not as today's default), read safely and without aliases (config.base.read_yaml); {} when
        the run has none."""
        if not self.config_path.is_file():
            return {}
        data = read_yaml(self.config_path, "run config")
        if not isinstance(data, dict):
            raise ConfigError(f"run config {self.config_path} must hold a mapping of field: value")
        return data

    def summary(self) -> dict[str, Any]:
        """summary.json, checked on read (runs/records.py), or {} before training wrote it."""
        if not self.summary_path.is_file():
            return {}
        fix = "it is written by training: train the run again (or restore the file)"
        return read_json_card(SummaryRecord, self.summary_path, fix).model_dump(mode="json")

    def history(self) -> list[dict[str, str]]:
        """metrics.csv's rows, one per epoch, each checked on read: a whole epoch number from 1, and a number (or
        nothing) in every other column of the header; a damaged row is refused naming its line, not met as a
        ValueError in a figure or a resumed run."""
        if not self.metrics_path.is_file():
            return []
        rows = read_csv(self.metrics_path)
        for line, row in enumerate(rows, start=2):
            epoch, bad = row.get("epoch") or "", [k for k, v in row.items() if not _number_or_empty(v)]
            if bad or not (epoch.isdigit() and int(epoch) >= 1):
                raise ModelError(
                    f"{self.metrics_path} line {line}: column(s) {bad or ['epoch']} not a number ({row}); it is "
                    "written by training: train the run again (or restore the file)"
                )
        return rows

    def checkpoint(self, which: str = "best") -> Path:
        path = self.checkpoint_path(which)
        if not path.is_file():
            raise ModelError(
                f"run folder {self.path} has no checkpoint {path.relative_to(self.path)}; "
                "did training stop before its first validation? Train again with: covidct train"
            )
        return path

    def eval_dir(self, name: str) -> Path:
        return self.path / f"eval-{name}"

    @property
    def threshold_path(self) -> Path:
        return self.path / "threshold.json"

    def threshold_record(self) -> OperatingPoint | None:
        """The run's operating point (threshold.json, `covidct threshold`), validated, if one was chosen."""
        if not self.threshold_path.is_file():
            return None
        record = read_json(self.threshold_path, "choose again: covidct threshold")
        return OperatingPoint.from_dict(record, str(self.threshold_path))

    def write_threshold_record(self, point: OperatingPoint) -> Path:
        """threshold.json's one writer (covidct threshold, training's operating point, covidct adapt)."""
        return write_json(self.threshold_path, point.to_dict())

    def eval_dirs(self) -> list[Path]:
        """Every eval-<name> folder of the run, sorted."""
        return sorted(d for d in self.path.glob("eval-*") if d.is_dir())

    @classmethod
    def of_checkpoint(cls, ckpt: Path) -> RunDir | None:
        """The run folder a checkpoint sits in (RUN/checkpoints/<which>.ckpt), or None for a checkpoint elsewhere."""
        return cls(ckpt.parent.parent) if ckpt.parent.name == "checkpoints" else None

    def evaluation(self, name: str) -> dict[str, Any] | None:
        """eval-<name>/metrics.json, checked on read (runs/records.py), or None when the run was not evaluated so."""
        path = self.eval_dir(name) / "metrics.json"
        if not path.is_file():
            return None
        fix = f"evaluate again: covidct evaluate {self.path} --split {name} (an external set: --on {name}=FOLDER)"
        return read_json_card(EvaluationRecord, path, fix).model_dump(mode="json")

    def evaluations(self) -> dict[str, dict[str, Any]]:
        """Every finished evaluation of the run, by name (test, val, or an external set's name)."""
        out = {}
        for d in self.eval_dirs():
            m = self.evaluation(d.name.removeprefix("eval-"))
            if m is not None:
                out[d.name.removeprefix("eval-")] = m
        return out

    def data(self, data_dir: str | Path | None = None) -> Any:
        """The run's data (SplitData) as it was trained: its sources, or its folder (`data_dir` overrides it; else
        training_folder finds it from wherever the command runs)."""
        from covidct.data.sources import run_data

        config = self.config()
        return run_data(config, data_dir or self.training_folder(config))

    def training_folder(self, config: Any) -> Path | None:
        """Where a single-source run's data folder is, from any working directory: the absolute path recorded at
        training (summary.json's data_dir) when it is there, else $COVIDCT_DATA_DIR, else None (the config's own
        data_dir, which may be relative to where training ran). None for runs of sources or of a CSV."""
        if getattr(config, "sources", None) or getattr(config, "data_csv", None):
            return None
        recorded = self.summary().get("data_dir") if self.summary_path.is_file() else None
        if isinstance(recorded, str) and Path(recorded).is_absolute() and Path(recorded).is_dir():
            return Path(recorded)
        env = os.environ.get("COVIDCT_DATA_DIR")
        return Path(env) if env else None

    @property
    def scorer_graph_path(self) -> Path:
        """checkpoints/best.onnx: the best checkpoint's scorer as ONNX, stamped with the weights it was made from
        (covidct.inference.export.write_run_graph)."""
        return self.checkpoints_dir / "best.onnx"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    @property
    def ood_dir(self) -> Path:
        """The out-of-distribution detector (ood.json + ood.safetensors; covidct.ood)."""
        return self.path / "ood"

    @property
    def probe_dir(self) -> Path:
        """The ImageNet probe blended into the scores (covidct.inference.imagenet_probe)."""
        return self.path / "imagenet_probe"


def find_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """checkpoints/best.ckpt or last.ckpt of a run folder, or a .ckpt path given directly."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.suffix == ".ckpt":
        return run_dir
    return RunDir.at(run_dir).checkpoint(which)


def _number_or_empty(value: str | None) -> bool:
    if value == "":
        return True
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
