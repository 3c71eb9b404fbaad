"""The tracking store: its URI, a client for it, experiments, retries while it is unreachable, ending a run.

Every other module of ``fovea.track`` reaches MLflow's tracking store and registry through ``client`` here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fovea.errors import ConfigError
from fovea.secrets import redact, uri_credentials

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TRAIN_NAME_TAG = "fovea.train_name"
MAX_BATCH = 900  # MLflow's log_batch accepts at most 1000 metrics per call


def client(uri: str) -> Any:
    """A client whose tracking store and model registry are both ``uri``.

    An MlflowClient built with the tracking URI alone takes its registry from MLflow's process-wide setting, so a
    registry set earlier for another store would silently receive this store's model versions.
    """
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def param_batches(params: dict[str, Any]) -> list[list[Any]]:
    """``params`` as MLflow ``Param`` lists of at most 100 (``log_batch``'s limit), secrets redacted and each value
    cut to MLflow's 6000 characters: every run's params go to the store through here."""
    from mlflow.entities import Param

    items = [Param(key, str(value)[:6000]) for key, value in redact(params).items()]
    return [items[start : start + 100] for start in range(0, len(items), 100)]


def use_store(uri: str) -> None:
    """Point MLflow's fluent API (``log_model``, ``load_model``) at ``uri`` for tracking and registry alike."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def resolve_tracking_uri(uri: str = "") -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's own default ``sqlite:///mlflow.db`` in this folder.

    Relative SQLite and file paths are made absolute here, in the driver, because Ray workers run in other
    working directories.

    Raises:
        ConfigError: the URI carries credentials (``http://user:pass@host``); they belong in the environment
            (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``).
    """
    given = uri
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_TRACKING_URI
    problem = uri_credentials(uri)
    if problem:  # it would be printed, recorded and shown in Ray's dashboard
        raise ConfigError(f"{'tracking URI' if given else 'MLFLOW_TRACKING_URI'}: {problem}")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if uri.startswith("file:") and not uri.startswith("file:///"):
        return Path(uri.removeprefix("file:")).resolve().as_uri()
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` at ``uri``, created if missing.

    With a SQLite store the artifacts go to ``mlruns/`` beside the database file (MLflow's own default is the
    current folder, which is the same place when ``mlflow.db`` is the default one, but under ``ray job submit``
    the current folder is a temporary copy that is deleted afterwards).
    """

    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:////"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    return mlflow_client.create_experiment(name, artifact_location=artifact_location)


def wait_for_store(uri: str, timeout: float) -> bool:
    """Whether the tracking store at ``uri`` answers within ``timeout`` seconds (polled every few seconds)."""
    mlflow_client = client(uri)
    deadline = time.monotonic() + timeout
    warned = False
    while True:
        try:
            mlflow_client.search_experiments(max_results=1)
            return True
        except Exception as err:
            if not is_connection_problem(err):
                raise
            if time.monotonic() + 3 > deadline:
                return False
            if not warned:
                print(f"waiting up to {timeout:.0f} s for the MLflow tracking store at {uri} ...", flush=True)
                warned = True
            time.sleep(3)


def with_retries(call: Any, timeout: float) -> Any:
    """``call()``, retried every few seconds while the store is unreachable, for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 1.0
    while True:
        try:
            return call()
        except Exception as err:
            if time.monotonic() + delay > deadline or not is_connection_problem(err):
                raise
            print(f"warning: MLflow tracking store unreachable ({type(err).__name__}); retrying in {delay:.0f} s")
            time.sleep(delay)
            delay = min(10.0, delay * 2)


def is_connection_problem(err: BaseException) -> bool:
    """An error a later attempt may not meet (store unreachable or failing), not a request the store refuses (4xx)."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return not 400 <= err.get_http_status_code() < 500
    return isinstance(err, OSError | ConnectionError | TimeoutError)


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run as ended (the driver does this once the final model is logged)."""

    client(uri).set_terminated(run_id, status)


STOP_REASON_TAG = "fovea.stop_reason"


def end_training_run(uri: str, experiment_id: str, train_name: str, status: str, reason: str) -> tuple[str, int] | None:
    """End the run of training run ``train_name`` (the newest one still RUNNING, else the newest) as ``status``
    (``KILLED``, ``FAILED``) with ``reason`` (one line) as its ``fovea.stop_reason`` tag: what the driver does when
    the job is interrupted or its run dies, since the workers that logged to it are gone.

    Returns:
        ``(run_id, last epoch logged)``, or None when the run has no MLflow run (it stopped before its workers
        opened one).
    """
    mlflow_client = client(uri)
    from fovea.track.fast_browse import quoted

    runs = mlflow_client.search_runs(
        [experiment_id],
        f"tags.`{TRAIN_NAME_TAG}` = {quoted(train_name)}",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    if not runs:
        return None
    run = next((r for r in runs if r.info.status == "RUNNING"), runs[0])
    run_id = run.info.run_id
    mlflow_client.set_tag(run_id, STOP_REASON_TAG, reason[:5000])
    if run.info.status != "FINISHED" or status == "FAILED":  # a worker stopped by the signal may have ended it FAILED
        mlflow_client.set_terminated(run_id, status)
    epochs = mlflow_client.get_metric_history(run_id, "epoch")
    return run_id, int(max((m.value for m in epochs), default=0))
