"""Experiment tracking with MLflow: a finished run folder logged as one MLflow run.

Logged: every config field as a param; metrics.csv as per-epoch metric histories (step = epoch); the final
metrics of each evaluated split with their 95% intervals; the run's files as artifacts in the run folder's own
layout (config, history, summary, evaluations, report.html, and the exported model: safetensors + model.json).
The default tracking URI is a local SQLite database, sqlite:///mlruns.db; any MLflow tracking server works.
Logging happens once training (and evaluation) has finished, from rank 0 only, so a crashed run logs nothing.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from covidct.errors import ConfigError
from covidct.runs import RunDir

DEFAULT_URI = "sqlite:///mlruns.db"
EXPERIMENT = "covidct"
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _client(uri: str | None) -> Any:
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("MLflow tracking needs the mlflow package: pip install 'covidct[mlflow]'") from None

    mlflow.set_tracking_uri(uri or DEFAULT_URI)
    return MlflowClient(tracking_uri=uri or DEFAULT_URI)


def final_metrics(run_dir: Path) -> dict[str, float]:
    """{split_metric: value} and {split_metric_ci_low/high} from each eval-<split>/metrics.json."""
    out: dict[str, float] = {}
    for m in RunDir(run_dir).evaluations().values():  # each checked on read
        split = m["split"]
        for key in ("accuracy", "sensitivity", "specificity", "auc", "precision", "npv", "f1"):
            if isinstance(m.get(key), (int, float)) and m[key] == m[key]:  # not NaN
                out[f"{split}_{key}"] = float(m[key])
            ci = m.get("ci95", {}).get(key, {})
            interval = ci.get("delong" if key == "auc" else "wilson") or ci.get("bootstrap")
            if interval and None not in interval:
                out[f"{split}_{key}_ci_low"], out[f"{split}_{key}_ci_high"] = map(float, interval)
    return out


def log_run(run_dir: str | Path, uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    """Log a finished run folder to MLflow; returns the MLflow run id."""
    from mlflow.entities import Metric, Param

    run_dir = Path(run_dir)
    folder = RunDir(run_dir)
    config_path = folder.config_path
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not a covidct run folder (no config.yaml) and cannot be logged to MLflow")
    if not (folder.export_dir / "model.safetensors").is_file() and folder.checkpoint_path("best").is_file():
        from covidct.inference.export import export_run

        export_run(run_dir, "safetensors")
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=run_dir.name, tags={"covidct.run_dir": str(run_dir.resolve())})
    run_id = run.info.run_id
    config = folder.raw_config()
    params = [Param(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in config.items()]
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(row[key]), now, int(row["epoch"]))
        for row in folder.history()
        for key in EPOCH_METRICS
        if row.get(key) not in (None, "", "nan")
    ]
    metrics += [Metric(k, v, now, 0) for k, v in final_metrics(run_dir).items()]
    for start in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000], params=params if start == 0 else [])
    for path in folder.artifacts():
        client.log_artifact(run_id, str(path))
    for sub in [*folder.eval_dirs(), folder.export_dir]:
        if sub.is_dir():
            client.log_artifacts(run_id, str(sub), artifact_path=sub.name)
    client.set_terminated(run_id)
    return run_id


def resolve_run(ref: str | Path, uri: str | None = None) -> Path:
    """A run folder for `ref`: the folder itself, or an MLflow run id (its recorded folder when it still exists
    here, else its artifacts downloaded to a temporary folder with the same layout)."""
    path = Path(ref)
    if path.exists() or not RUN_ID.match(str(ref)):
        return path
    client = _client(uri)
    try:
        run = client.get_run(str(ref))
    except Exception as e:
        raise ConfigError(f"MLflow run {ref} not found at {uri or DEFAULT_URI} ({type(e).__name__})") from None
    recorded = Path(run.data.tags.get("covidct.run_dir", ""))
    if recorded.name and RunDir(recorded).config_path.is_file():
        return recorded
    target = Path(tempfile.mkdtemp(prefix=f"covidct-mlflow-{ref[:8]}-")) / run.info.run_name
    target.mkdir(parents=True)
    client.download_artifacts(str(ref), "", str(target))
    return target
