"""Tracking: URI resolution, and a failing store that never loses metrics (they are retried on the next flush)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fovea.track import RunLogger, ensure_experiment, finish_run, plot_curves, resolve_tracking_uri


def test_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path}/runs/m.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("store") == (tmp_path / "store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert resolve_tracking_uri() == "http://127.0.0.1:5001"
    assert resolve_tracking_uri("http://other:5000") == "http://other:5000"  # track.uri wins over the environment


def test_artifacts_live_beside_the_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # not the store's folder: artifacts must not follow the current directory
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    experiment = MlflowClient(uri).get_experiment(ensure_experiment(uri, "beside"))
    assert experiment.artifact_location == (tmp_path / "store" / "mlruns").as_uri()


@pytest.fixture
def logger(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = ensure_experiment(uri, "unit")
    assert ensure_experiment(uri, "unit") == experiment  # idempotent
    run_logger = RunLogger(
        uri, run_id=None, experiment_id=experiment, run_name="r", params={"optim.lr": 0.1}, tags={"k": "v"}
    )
    return uri, run_logger


def test_metrics_survive_a_failing_store(logger, monkeypatch, capsys):
    uri, run_logger = logger
    client = MlflowClient(uri)
    real_log_batch = run_logger.client.log_batch

    def down(*args, **kwargs):
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(run_logger.client, "log_batch", down)
    for step in range(1, 4):
        run_logger.log_metrics({"loss": 1.0 / step}, step=step)
        assert run_logger.flush() is False  # nothing raised, nothing dropped
    assert capsys.readouterr().out.count("MLflow tracking failed") == 1  # warned once, not per call
    assert client.get_metric_history(run_logger.run_id, "loss") == []

    monkeypatch.setattr(run_logger.client, "log_batch", real_log_batch)
    assert run_logger.flush() is True
    history = client.get_metric_history(run_logger.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]


def test_params_tags_resume_and_finish(logger):
    uri, run_logger = logger
    client = MlflowClient(uri)
    run = client.get_run(run_logger.run_id)
    assert run.data.params == {"optim.lr": "0.1"} and run.data.tags["k"] == "v"
    finish_run(uri, run_logger.run_id, "FAILED")
    resumed = RunLogger(uri, run_id=run_logger.run_id, experiment_id="", run_name="", tags={"resumed": "yes"})
    assert resumed.run_id == run_logger.run_id
    assert client.get_run(run_logger.run_id).info.status == "RUNNING"
    finish_run(uri, run_logger.run_id)
    run = client.get_run(run_logger.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "yes"


def test_curves_figure(tmp_path):
    history = [
        {"epoch": e, "train_loss": 2 / e, "val_loss": 1.5 / e, "val_top1": 20.0 * e, "val_top5": 50 + 10.0 * e}
        for e in range(1, 5)
    ]
    figure = plot_curves(history)
    path = Path(tmp_path) / "curves.png"
    figure.savefig(path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    loss_axis, accuracy_axis = figure.axes
    assert [line.get_label() for line in loss_axis.lines] == ["train loss", "val loss"]
    assert list(accuracy_axis.lines[0].get_ydata()) == [20.0, 40.0, 60.0, 80.0]


def test_versions_register_in_the_given_store_whatever_mlflow_was_pointed_at(tmp_path):
    import mlflow
    import numpy as np
    import torch

    from fovea.track import log_final_model

    other, store = (f"sqlite:///{tmp_path / name / 'mlflow.db'}" for name in ("other", "store"))
    (tmp_path / "other").mkdir()
    (tmp_path / "store").mkdir()
    mlflow.set_registry_uri(other)  # e.g. left behind by an earlier load from another registry in this process
    mlflow.set_tracking_uri(other)
    run_id = _client_for(store).create_run(ensure_experiment(store, "reg")).info.run_id
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)).eval()
    version = log_final_model(
        store,
        run_id,
        model,
        input_example=np.zeros((1, 3, 2, 2), dtype=np.float32),
        registered_model_name="m",
        version_tags={"k": "v"},
        alias="champion",
    )
    assert version == "1"
    registry = _client_for(store)
    assert registry.get_model_version_by_alias("m", "champion").tags["k"] == "v"
    assert _client_for(other).search_registered_models() == []


def _client_for(uri: str) -> MlflowClient:
    return MlflowClient(uri, registry_uri=uri)
