"""MLflow records of a Tune sweep: one parent run, a nested run per trial, results as parent artifacts, and the
champion alias moved only when the sweep's best model beats the current champion on the same dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fovea.secrets import redact
from fovea.track import store
from fovea.track.curves import log_curves_from_run
from fovea.track.store import param_batches

SWEEP_NAME_TAG = "fovea.sweep"
TRIAL_ID_TAG = "fovea.trial_id"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI shows trial runs under the sweep's run


def start_sweep_run(
    uri: str, experiment_id: str, *, sweep_name: str, params: dict[str, Any], tags: dict[str, str]
) -> str:
    """The sweep's parent run: continued when a run with this sweep name exists (a resumed sweep), else created."""
    client = store.client(uri)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{SWEEP_NAME_TAG}` = '{sweep_name}' and tags.`fovea.role` = 'sweep'"
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(
        experiment_id, run_name=sweep_name, tags={**tags, SWEEP_NAME_TAG: sweep_name, "fovea.role": "sweep"}
    )
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def trial_run(
    uri: str,
    experiment_id: str,
    *,
    parent_run_id: str,
    sweep_name: str,
    trial_id: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
) -> str:
    """A trial's nested run, found by its trial id (a resumed or PBT-restarted trial keeps its run) or created."""
    client = store.client(uri)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in redact(params).items():  # PBT changes a trial's values: the latest are recorded as tags
            client.set_tag(run_id, f"fovea.current.{key}", str(value))
        return run_id
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={
            **tags,
            PARENT_TAG: parent_run_id,
            SWEEP_NAME_TAG: sweep_name,
            TRIAL_ID_TAG: trial_id,
            "fovea.role": "trial",
        },
    )
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def _log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    for batch in param_batches(params):
        client.log_batch(run_id, params=batch)


def end_trial_run(
    uri: str, run_id: str, *, outcome: str, epochs: int | None = None, reason: str = "", status: str = "FINISHED"
) -> None:
    """Close a trial's run with what became of it: ``completed``, ``early_stopped``, ``skipped`` or ``errored``."""
    from mlflow.entities import Metric

    client = store.client(uri)
    client.set_tag(run_id, "fovea.trial_outcome", outcome)
    client.set_tag(run_id, "fovea.early_stopped", str(outcome == "early_stopped").lower())
    if reason:
        client.set_tag(run_id, "fovea.skip_reason" if outcome == "skipped" else "fovea.reason", reason[:5000])
    metrics = [Metric("early_stopped", float(outcome == "early_stopped"), 0, 0)]
    if epochs is not None:
        metrics.append(Metric("epochs_trained", float(epochs), 0, 0))
    client.log_batch(run_id, metrics=metrics)
    if outcome != "skipped":
        log_curves_from_run(uri, run_id)
    client.set_terminated(run_id, status)


def log_sweep_results(
    uri: str,
    run_id: str,
    *,
    files: list[Path],
    metrics: dict[str, float],
    tags: dict[str, str],
    figures: dict[str, Any],
) -> None:
    """The sweep's results on its parent run: files (results CSV, best config), plots, summary metrics and tags."""
    from mlflow.entities import Metric

    client = store.client(uri)
    for path in files:
        client.log_artifact(run_id, str(path))
    for name, figure in figures.items():
        client.log_figure(run_id, figure, f"plots/{name}")
    client.log_batch(run_id, metrics=[Metric(key, float(value), 0, 0) for key, value in metrics.items()])
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
