"""MLflow records of an evaluation (``jobs/evaluate.py``): a new run with the scores, per-class tables and confusion
matrices, linked to the registered model version it scored.

The link goes both ways: the run carries ``fovea.registered_model`` / ``fovea.model_version`` tags, and the version
gets ``last_eval_*`` tags naming the run. In MLflow 3 a registered version also points at a logged model (its
``model_id``); the run's metrics are logged against that model and the model is recorded as the run's input, so
the model's page in the UI lists this evaluation's metrics and the dataset they were measured on.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fovea.errors import first_line
from fovea.secrets import redact
from fovea.track import store
from fovea.track.store import MAX_BATCH, ensure_experiment, param_batches

_METRIC_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")
MAX_ANNOTATED_CLASSES = 30  # above this many classes the confusion plot's cells are too small for numbers


class ScoredMode(Protocol):
    """What is logged of one scoring mode (single or multi-view): ``fovea.evaluate.scoring.ModeScores`` has it."""

    classes: list[str]
    confusion: Any  # (classes, classes) counts, rows = true class, columns = predicted class

    def per_class(self) -> list[dict[str, Any]]: ...


@dataclass
class EvaluationRecord:
    """Where an evaluation was recorded.

    Attributes:
        run_id: the new MLflow run.
        linked_version: the registered version tagged with this run (None when not linked).
        model_id: the MLflow 3 logged model the metrics were logged against (None when the version has none).
    """

    run_id: str
    linked_version: str | None = None
    model_id: str | None = None


def metric_key(name: str) -> str:
    """A class name made safe for an MLflow metric key (letters, digits, ``_ - . /`` and spaces; others become
    ``_``); ``per_class.csv`` keeps the exact names."""
    key = _METRIC_KEY_UNSAFE.sub("_", name).strip() or "_"
    return "_" if set(key) <= {".", "/"} else key


MAX_METRIC_KEY = 250  # MLflow's longest metric key


def class_metric_keys(prefix: str, classes: Sequence[str]) -> list[str]:
    """A metric key per class, ``prefix`` + the class name made safe (``metric_key``, and a ``/`` becomes ``_`` too,
    so no name reads as a path MLflow refuses), cut to MLflow's 250 characters; names that end up alike get their
    class index appended, so every class keeps its own key."""
    keys: list[str] = []
    taken: set[str] = set()
    for index, name in enumerate(classes):
        key = prefix + metric_key(name.replace("/", "_"))[: MAX_METRIC_KEY - len(prefix)]
        if key in taken:
            suffix = f"_{index}"
            key = key[: MAX_METRIC_KEY - len(suffix)] + suffix
        taken.add(key)
        keys.append(key)
    return keys


def per_class_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``class,count,correct,accuracy`` (accuracy in percent, empty for a class the split lacks) for each class."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["class", "count", "correct", "accuracy"])
    for row in rows:
        accuracy = "" if math.isnan(row["accuracy"]) else f"{row['accuracy']:.4f}"  # a class the split lacks
        writer.writerow([row["class"], row["count"], row["correct"], accuracy])
    return out.getvalue()


def confusion_csv(confusion: Any, classes: Sequence[str]) -> str:
    """The confusion matrix as CSV: a row per true class, a column per predicted class."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, confusion, strict=True):
        writer.writerow([name, *(int(count) for count in row)])
    return out.getvalue()


def plot_confusion_matrix(confusion: Any, classes: Sequence[str], title: str) -> Any:
    """A confusion-matrix figure: colours are each true class's row normalised to fractions (so rare and common
    classes read alike), cells are annotated with the counts (up to 30 classes), class names on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    num_classes = len(classes)
    side = min(30.0, max(4.5, 0.45 * num_classes + 2.5))
    figure = Figure(figsize=(side + 1.2, side), dpi=100)
    axes = figure.subplots()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = list(range(num_classes))
    font = 9 if num_classes <= 15 else 6
    axes.set_xticks(ticks, labels=list(classes), rotation=60, ha="right", rotation_mode="anchor", fontsize=font)
    axes.set_yticks(ticks, labels=list(classes), fontsize=font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title, fontsize=10)
    if num_classes <= MAX_ANNOTATED_CLASSES:
        for row in range(num_classes):
            for column in range(num_classes):
                colour = "white" if fractions[row, column] > 0.5 else "black"
                axes.text(column, row, str(counts[row, column]), ha="center", va="center", color=colour, fontsize=font)
    figure.tight_layout()
    return figure


def _version_model_id(client: Any, version: Any) -> str | None:
    """The MLflow 3 logged model behind a registered version, or None (versions registered before MLflow 3)."""
    from mlflow.exceptions import MlflowException

    model_id = getattr(version, "model_id", None)
    source = str(getattr(version, "source", "") or "")
    if not model_id and source.startswith("models:/m-"):  # the version's source names its logged model
        model_id = source.removeprefix("models:/").split("/")[0]
    if not model_id:
        return None
    try:
        client.get_logged_model(model_id)
    except MlflowException:
        return None
    return model_id


def log_evaluation(
    uri: str,
    *,
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, float],
    modes: dict[str, tuple[ScoredMode, str]],
    summary: dict[str, Any],
    registered_model: str | None = None,
    version: str | None = None,
    link_version: bool = True,
    version_tags: dict[str, str] | None = None,
    dataset_name: str = "",
    dataset_digest: str = "",
) -> EvaluationRecord:
    """Record an evaluation as a new, finished run in ``experiment`` and link it to the model version it scored.

    Args:
        uri: tracking URI (registry at the same URI).
        experiment: experiment name, created when missing.
        run_name: the new run's name.
        tags: run tags (``fovea.role=eval``, the model and dataset it scored, ...).
        params: run parameters (the evaluation settings).
        metrics: ``{key: value}`` logged at step 0 (``eval_top1``, ``class_top1/<class>``, ...).
        modes: ``{artifact suffix: (scores, plot title)}``; each mode gets ``per_class<suffix>.csv``,
            ``confusion_matrix<suffix>.csv`` and ``confusion_matrix<suffix>.png``.
        summary: everything, written as ``evaluation.json``.
        registered_model: the registered model's name, when the scored model came from the registry.
        version: its version (an alias already resolved).
        link_version: set ``version_tags`` on that version and log the metrics against its logged model.
        version_tags: more ``last_eval_*`` tags for the version (``last_eval_run_id`` is always set).
        dataset_name: the dataset's name for metrics logged against the model.
        dataset_digest: its digest (the manifest hash).

    Returns:
        The run's id and what it was linked to.
    """
    from mlflow.entities import LoggedModelInput, Metric
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    experiment_id = ensure_experiment(uri, experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        model_id = None
        found = None
        if registered_model and version:
            try:
                found = client.get_model_version(registered_model, version)
            except MlflowException as err:
                print(f"warning: could not read {registered_model} version {version} ({first_line(err)})")
            if found is not None and link_version:
                model_id = _version_model_id(client, found)
        for batch in param_batches(params):
            client.log_batch(run_id, params=batch)
        now = int(time.time() * 1000)
        on_model: dict[str, str] = {}
        if model_id is not None:
            on_model["model_id"] = model_id
            if dataset_name and dataset_digest:  # MLflow takes both or neither
                on_model.update(dataset_name=dataset_name[:200], dataset_digest=dataset_digest)
        entries = [Metric(key, float(value), now, 0, **on_model) for key, value in metrics.items()]
        for start in range(0, len(entries), MAX_BATCH):
            client.log_batch(run_id, metrics=entries[start : start + MAX_BATCH])
        if model_id is not None:
            client.log_inputs(run_id, models=[LoggedModelInput(model_id=model_id)])
        for suffix, (scores, title) in modes.items():
            client.log_text(run_id, per_class_csv(scores.per_class()), f"per_class{suffix}.csv")
            client.log_text(run_id, confusion_csv(scores.confusion, scores.classes), f"confusion_matrix{suffix}.csv")
            figure = plot_confusion_matrix(scores.confusion, scores.classes, title)
            client.log_figure(run_id, figure, f"confusion_matrix{suffix}.png")
        client.log_dict(run_id, redact(summary), "evaluation.json")
        linked = None
        if found is not None and link_version and registered_model:
            for key, value in {**(version_tags or {}), "last_eval_run_id": run_id}.items():
                client.set_model_version_tag(registered_model, str(found.version), key, str(value))
            linked = str(found.version)
        status = "FINISHED"
        return EvaluationRecord(run_id=run_id, linked_version=linked, model_id=model_id)
    finally:
        client.set_terminated(run_id, status)


def run_params(uri: str, run_id: str) -> dict[str, str]:
    """The parameters of a run (a training run's flattened config); empty when the run cannot be read."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(store.client(uri).get_run(run_id).data.params)
    except (MlflowException, OSError):
        return {}
