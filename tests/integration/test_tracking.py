"""MLflow tracking with the SQLite backend: what is logged reads back equal to the run folder (issue 7)."""

import csv
import shutil
from pathlib import Path

import pytest
import yaml

from covidct.cli import main
from covidct.evaluation.evaluate import evaluate_run
from covidct.reporting.tracking import log_run, resolve_run

pytest.importorskip("mlflow")


@pytest.mark.slow
def test_run_logged_to_sqlite_reads_back_equal(trained_run, tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQLite store's artifacts in ./mlruns

    run_dir = tmp_path / trained_run.name
    shutil.copytree(trained_run, run_dir)
    evaluate_run(run_dir, "test", n_bootstrap=0)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_id = log_run(run_dir, uri)

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert run.data.params["model"] == config["model"] and run.data.params["lr"] == str(config["lr"])
    assert set(run.data.params) == set(config)
    history = list(csv.DictReader((run_dir / "metrics.csv").open()))
    logged = client.get_metric_history(run_id, "val_acc")
    assert [(m.step, m.value) for m in logged] == [(int(r["epoch"]), float(r["val_acc"])) for r in history]
    assert run.data.metrics["test_auc_ci_low"] <= run.data.metrics["test_auc"] <= run.data.metrics["test_auc_ci_high"]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.csv", "summary.json", "eval-test", "export"} <= names
    assert {a.path for a in client.list_artifacts(run_id, "export")} == {
        "export/model.json",
        "export/model.safetensors",
        "export/ood.json",  # the out-of-distribution detector travels with the export
        "export/ood.safetensors",
    }
    local = client.download_artifacts(run_id, "metrics.csv", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == (run_dir / "metrics.csv").read_bytes()

    # compare takes the run id: the recorded folder when it exists, else the downloaded artifacts
    assert resolve_run(run_id, uri) == run_dir.resolve()
    shutil.move(run_dir, tmp_path / "moved")
    restored = resolve_run(run_id, uri)
    assert (restored / "eval-test" / "metrics.json").is_file()
    assert main(["compare", run_id, "--mlflow", uri, "--out", str(tmp_path / "cmp")]) == 0
    assert "timm:resnet10t" in (tmp_path / "cmp.md").read_text()
