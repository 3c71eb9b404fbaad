"""Tracking: URI resolution, and a failing store that never loses metrics (they are retried on the next flush)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fovea.track import RunLogger, ensure_experiment, finish_run, plot_curves, replay_fallback, resolve_tracking_uri


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
        uri,
        run_id=None,
        experiment_id=experiment,
        run_name="r",
        params={"optim.lr": 0.1},
        tags={"k": "v"},
        flush_interval_s=0.2,
        fallback_dir=tmp_path / "fallback",
    )
    assert len(run_logger.run_id) == 32  # the sender thread opened the run (the tests below break the store after)
    yield uri, run_logger
    run_logger.close(timeout=0)


def _down(*args, **kwargs):
    raise ConnectionError("tracking server unreachable")


def test_metrics_survive_a_failing_store(logger, monkeypatch, capsys):
    uri, run_logger = logger
    client = MlflowClient(uri)
    real_log_batch = run_logger.client.log_batch
    monkeypatch.setattr(run_logger.client, "log_batch", _down)
    for step in range(1, 4):
        run_logger.log_metrics({"loss": 1.0 / step}, step=step)  # returns at once: the sender thread sends
        assert run_logger.flush(timeout=0.5) is False  # nothing raised, nothing dropped
    assert run_logger.pending() == 3
    assert capsys.readouterr().out.count("MLflow tracking store unreachable") == 1  # warned once, not per attempt
    assert client.get_metric_history(run_logger.run_id, "loss") == []

    monkeypatch.setattr(run_logger.client, "log_batch", real_log_batch)  # the store is back
    assert run_logger.flush(timeout=10) is True
    history = client.get_metric_history(run_logger.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert "reachable again" in capsys.readouterr().out
    assert run_logger.sent_metrics == 3 and run_logger.send_s > 0 and run_logger.blocking_s > 0


def test_the_sender_batches_and_the_training_thread_does_not_wait(logger, monkeypatch):
    uri, run_logger = logger
    batches = []
    real_log_batch = run_logger.client.log_batch

    def slow_log_batch(run_id, metrics=(), **kwargs):
        time.sleep(0.2)  # a slow store: the caller of log_metrics must not feel it
        batches.append(len(metrics))
        return real_log_batch(run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(run_logger.client, "log_batch", slow_log_batch)
    started = time.perf_counter()
    for step in range(1, 2001):  # 2,000 steps x 2 metrics: more than one log_batch call (at most 900 each)
        run_logger.log_metrics({"step/train_loss": 1.0 / step, "step/lr": 1e-3}, step=step)
    assert time.perf_counter() - started < 0.5 * 4000 / 900 * 0.2  # far less than the store's own time
    assert run_logger.flush(timeout=30) is True
    assert sum(batches) == 4000 and max(batches) <= 900 and len(batches) >= 5
    history = MlflowClient(uri).get_metric_history(run_logger.run_id, "step/train_loss")
    assert sorted(m.step for m in history) == list(range(1, 2001))
    assert run_logger.sent_metrics == 4000 and run_logger.send_s >= 0.2 * len(batches)


def test_an_outage_past_close_goes_to_a_fallback_file_that_replays(logger, monkeypatch, capsys):
    uri, run_logger = logger
    monkeypatch.setattr(run_logger.client, "log_batch", _down)
    monkeypatch.setattr(run_logger.client, "log_figure", _down)
    run_logger.log_metrics({"val_top1": 50.0}, step=1)
    run_logger.log_metrics({"val_top1": 75.0}, step=2)
    history = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "val_top1": 50.0, "val_top5": 90.0} for e in (1, 2)]
    run_logger.log_curves(history)
    fallback = run_logger.close("FINISHED", timeout=1)
    assert fallback == Path(run_logger.fallback_dir) / f"{run_logger.run_id}.jsonl"
    out = capsys.readouterr().out
    assert "2 metrics and 1 artifacts" in out and f"fovea runs sync {fallback}" in out
    client = MlflowClient(uri)
    assert client.get_run(run_logger.run_id).info.status == "RUNNING"  # ended only once everything is in

    sent = replay_fallback(fallback)
    assert sent == {
        "run_id": run_logger.run_id,
        "tracking_uri": uri,
        "metrics": 2,
        "artifacts": 1,
        "status": "FINISHED",
    }
    assert [m.value for m in client.get_metric_history(run_logger.run_id, "val_top1")] == [50.0, 75.0]
    assert client.get_run(run_logger.run_id).info.status == "FINISHED"
    assert "training_curves.png" in [a.path for a in client.list_artifacts(run_logger.run_id)]
    assert not fallback.exists() and fallback.with_name(fallback.name + ".sent").exists()
    with pytest.raises(ValueError, match="not a fovea tracking fallback file"):
        replay_fallback(fallback.with_name(fallback.name + ".sent").rename(fallback.parent / "x.txt").parent / "nope")


def test_params_tags_resume_and_finish(logger):
    uri, run_logger = logger
    client = MlflowClient(uri)
    run_logger.log_dict({"model": {"name": "m"}}, "config.yaml")
    assert run_logger.close(timeout=10) is None
    run = client.get_run(run_logger.run_id)
    assert run.data.params == {"optim.lr": "0.1"} and run.data.tags["k"] == "v"
    assert [a.path for a in client.list_artifacts(run_logger.run_id)] == ["config.yaml"]
    finish_run(uri, run_logger.run_id, "FAILED")
    resumed = RunLogger(uri, run_id=run_logger.run_id, experiment_id="", run_name="", tags={"resumed": "yes"})
    assert resumed.run_id == run_logger.run_id
    assert resumed.flush(timeout=10) is True  # reopened
    assert client.get_run(run_logger.run_id).info.status == "RUNNING"
    resumed.close("FINISHED", timeout=10)
    run = client.get_run(run_logger.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "yes"


def test_a_run_resumed_while_the_store_is_down_trains_on_and_reopens_later(logger, monkeypatch, capsys):
    """A restarted worker (a lost node) reopens its run while the tracking server is still down: it must not wait for
    the store, nor fail; the run is reopened and the metrics sent once the store is back."""
    from fovea.track import store

    uri, first = logger
    assert first.close("FAILED", timeout=10) is None
    real_client = store.client
    broken = real_client(uri)
    for name in ("update_run", "set_tag", "log_batch"):
        monkeypatch.setattr(broken, name, _down)
    monkeypatch.setattr(store, "client", lambda _uri: broken)
    started = time.perf_counter()
    resumed = RunLogger(uri, run_id=first.run_id, experiment_id="", run_name="", tags={"attempt": "2"},
                        flush_interval_s=0.2, start_timeout_s=0.5)  # fmt: skip
    assert resumed.run_id == first.run_id and time.perf_counter() - started < 0.5  # at once, store or no store
    resumed.log_metrics({"val_top1": 60.0}, step=3)
    time.sleep(1.0)  # past start_timeout_s: still held, not given up
    assert resumed.flush(timeout=0.5) is False and resumed.pending() == 1
    assert "MLflow tracking store unreachable" in capsys.readouterr().out
    monkeypatch.undo()  # the store is back
    assert resumed.flush(timeout=10) is True
    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "RUNNING" and run.data.tags["attempt"] == "2"
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "val_top1")] == [(3, 60.0)]
    resumed.close("FINISHED", timeout=10)
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_a_logger_killed_in_an_outage_leaves_its_buffer_to_the_next_attempt(logger, monkeypatch, capsys):
    """Ray Train kills a worker group's actors outright when a node is lost: whatever rank 0 held in an outage must
    be on disk already, and the restarted worker sends it; epochs only the checkpoint has are sent from it."""
    uri, first = logger
    client = MlflowClient(uri)
    first.log_metrics({"val_loss": 1.0, "val_top1": 10.0}, step=1)
    assert first.flush(timeout=10) is True  # epoch 1 reached the store
    monkeypatch.setattr(first.client, "log_batch", _down)
    first.log_metrics({"step/train_loss": 0.9}, step=7)
    first.log_metrics({"val_loss": 0.8, "val_top1": 20.0}, step=2)
    assert first.flush(timeout=0.5) is False
    spool = Path(first.fallback_dir) / f"{first.run_id}.jsonl"
    held = [line for line in spool.read_text().splitlines() if '"metric"' in line]
    assert len(held) == 3  # on disk while the store is down
    with first._cond:  # killed: the thread stops, nothing more is written, close() never runs
        first._stopped = True
        first._cond.notify_all()
    first._thread.join(timeout=10)

    history = [{"epoch": 1, "val_loss": 1.0, "val_top1": 10.0}, {"epoch": 2, "val_loss": 0.8, "val_top1": 20.0},
               {"epoch": 3, "val_loss": 0.7, "val_top1": 30.0}]  # fmt: skip
    second = RunLogger(uri, run_id=first.run_id, experiment_id="", run_name="", flush_interval_s=0.2,
                       fallback_dir=first.fallback_dir, backfill=history)  # fmt: skip
    assert second.flush(timeout=10) is True
    out = capsys.readouterr().out
    assert "3 held metrics" in out and "epochs 3 of run" in out  # epoch 2 came from the file, 1 was there already
    assert not spool.exists()
    steps = sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, "val_top1"))
    assert steps == [(1, 10.0), (2, 20.0), (3, 30.0)]  # each once
    assert [m.step for m in client.get_metric_history(first.run_id, "step/train_loss")] == [7]
    assert [m.value for m in client.get_metric_history(first.run_id, "epoch")] == [3.0]
    second.close("FINISHED", timeout=10)


def test_a_store_that_refuses_a_request_is_not_retried(tmp_path):
    from fovea.track.store import is_connection_problem, with_retries

    calls = []

    def refused():
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import UNAUTHENTICATED

        calls.append(1)
        raise MlflowException("bad password", error_code=UNAUTHENTICATED)

    with pytest.raises(Exception, match="bad password"):
        with_retries(refused, timeout=30)
    assert len(calls) == 1  # a 401 is an answer, not an outage
    assert is_connection_problem(ConnectionError("refused"))


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


def test_final_curves_are_drawn_from_the_stored_metrics(tmp_path):
    from mlflow.entities import Metric

    from fovea.track import log_curves_from_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(ensure_experiment(uri, "curves")).info.run_id
    assert log_curves_from_run(uri, run_id) is False  # nothing to draw yet
    rows = [Metric(key, value * epoch, 0, epoch) for epoch in (1, 2, 3) for key, value in
            (("train_loss", 1.0), ("val_loss", 0.5), ("val_top1", 20.0), ("val_top5", 30.0))]  # fmt: skip
    client.log_batch(run_id, metrics=rows)
    assert log_curves_from_run(uri, run_id) is True
    png = Path(client.download_artifacts(run_id, "training_curves.png", str(tmp_path)))
    assert png.read_bytes()[:4] == b"\x89PNG"
