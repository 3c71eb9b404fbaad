"""Everything MLflow: the tracking URI, a run logger for rank 0, curves, and the registered final model.

Tracking must never kill training: every call to the tracking store is wrapped, failed batches stay in the
buffer and are sent with the next flush, and the first failure prints one warning.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TRAIN_NAME_TAG = "fovea.train_name"
MAX_BATCH = 900  # MLflow's log_batch accepts at most 1000 metrics per call


def _client(uri: str) -> Any:
    """A client whose tracking store and model registry are both ``uri``.

    An MlflowClient built with the tracking URI alone takes its registry from MLflow's process-wide setting, so a
    registry set earlier for another store would silently receive this store's model versions.
    """
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def _use_store(uri: str) -> None:
    """Point MLflow's fluent API (``log_model``, ``load_model``) at ``uri`` for tracking and registry alike."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def resolve_tracking_uri(uri: str = "") -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's own default ``sqlite:///mlflow.db`` in this folder.

    Relative SQLite and file paths are made absolute here, in the driver, because Ray workers run in other
    working directories.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_TRACKING_URI
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

    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:////"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


class RunLogger:
    """Logs one training run from rank 0: params, batched step metrics, epoch metrics and artifacts.

    Args:
        uri: tracking URI (absolute, see ``resolve_tracking_uri``).
        run_id: the run to continue (from a checkpoint); a new run is created when None.
        experiment_id: experiment for a new run.
        run_name: name of a new run.
        params: flat ``{name: value}`` logged once on a new run.
        tags: tags set on the run.
    """

    def __init__(
        self,
        uri: str,
        *,
        run_id: str | None,
        experiment_id: str,
        run_name: str,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:

        self.client = _client(uri)
        self._pending: list[Any] = []
        self._warned = False
        if run_id is None:
            run = self.client.create_run(experiment_id, run_name=run_name, tags=tags or {})
            self.run_id = run.info.run_id
            self._log_params(params or {})
        else:
            self.run_id = run_id
            self._call(self.client.update_run, run_id, status="RUNNING")
            for key, value in (tags or {}).items():
                self._call(self.client.set_tag, run_id, key, value)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            fn(*args, **kwargs)
            return True
        except Exception as err:  # the tracking store being down must not stop training
            if not self._warned:
                log.warning("MLflow tracking failed (%s); training goes on, metrics are kept and retried", err)
                print(f"warning: MLflow tracking failed ({type(err).__name__}); training goes on", flush=True)
                self._warned = True
            return False

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self._call(self.client.log_batch, self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics for ``step``; they are sent on the next ``flush``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())

    def flush(self) -> bool:
        """Send everything queued, in batches; keeps what could not be sent. Returns True when the queue is empty."""
        while self._pending:
            chunk = self._pending[:MAX_BATCH]
            if not self._call(self.client.log_batch, self.run_id, metrics=chunk):
                return False
            del self._pending[: len(chunk)]
        return True

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self._call(self.client.log_dict, self.run_id, data, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._call(self.client.log_figure, self.run_id, figure, artifact_file)

    def set_terminated(self, status: str = "FINISHED") -> None:
        self.flush()
        self._call(self.client.set_terminated, self.run_id, status)


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run as ended (the driver does this once the final model is logged)."""

    _client(uri).set_terminated(run_id, status)


def plot_curves(history: Iterable[dict[str, float]]) -> Any:
    """A two-panel figure of the run so far: losses, and validation accuracy, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = list(history)
    epochs = [row["epoch"] for row in rows]
    figure = Figure(figsize=(10, 4), dpi=100)
    loss_ax, acc_ax = figure.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train loss")
    loss_ax.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="val loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_title("loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [r["val_top1"] for r in rows], marker="o", label="val top-1")
    acc_ax.plot(epochs, [r["val_top5"] for r in rows], marker="o", label="val top-5")
    if any("val_top1_ema" in r for r in rows):
        acc_ax.plot(epochs, [r.get("val_top1_ema", float("nan")) for r in rows], marker=".", label="val top-1 (EMA)")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("%")
    acc_ax.set_ylim(0, 100)
    acc_ax.set_title("validation accuracy")
    acc_ax.legend(loc="lower right")
    figure.tight_layout()
    return figure


def log_final_model(
    uri: str,
    run_id: str,
    model: Any,
    *,
    input_example: Any,
    registered_model_name: str | None,
    version_tags: dict[str, str],
    description: str = "",
    classes: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    alias: str = "",
) -> str | None:
    """Log the trained model to the run (with signature and input example) and register a new version.

    Args:
        uri: tracking URI.
        run_id: the training run.
        model: the trained ``nn.Module`` on CPU, in eval mode.
        input_example: a numpy batch the model takes, e.g. float32 ``(1, 3, H, W)``.
        registered_model_name: registry name, or None to log without registering.
        version_tags: tags for the new model version (architecture, dataset, val top-1, ...).
        description: the version's description.
        classes: class names, saved beside the model as ``classes.json`` and in the model's metadata.
        metadata: more facts for the MLmodel file (normalisation mean/std, img_size, model name), which
            ``load_registered_model`` hands back with the module.
        alias: a registry alias (e.g. ``champion``) to point at the new version.

    Returns:
        The registered version number, or None when not registered.
    """
    import mlflow
    import mlflow.pytorch
    import timm
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.as_tensor(input_example)).numpy()
    signature = infer_signature(input_example, output)
    # Explicit requirements: MLflow's inference would re-load the model in a subprocess to find them.
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"]
    _use_store(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements,
            # MLflow 3 defaults to torch.export ("pt2"), which fixes the batch size to the input example's and
            # makes load_model return a graph, not the nn.Module people fine-tune; pickle keeps the module.
            serialization_format="pickle",
            metadata={**(metadata or {}), **({"classes": list(classes)} if classes is not None else {})},
            registered_model_name=registered_model_name,
            await_registration_for=60,
        )
        if classes is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "classes.json"
                path.write_text(json.dumps(classes, indent=1))
                mlflow.log_artifact(str(path), artifact_path="model_info")
    version = getattr(info, "registered_model_version", None)
    if registered_model_name and version is not None:
        client = _client(uri)
        for key, value in version_tags.items():
            client.set_model_version_tag(registered_model_name, str(version), key, value)
        if description:
            client.update_model_version(registered_model_name, str(version), description=description)
        if alias:
            client.set_registered_model_alias(registered_model_name, alias, str(version))
        return str(version)
    return None


def load_registered_model(model_uri: str, tracking_uri: str) -> tuple[Any, dict[str, Any]]:
    """A registered PyTorch model and what fovea recorded about it, from ``models:/NAME/VERSION`` or ``@ALIAS``.

    Returns:
        ``(module, info)``: the ``nn.Module`` on the CPU in eval mode, and ``info`` with ``version`` (the alias
        resolved), ``run_id``, and when recorded ``classes``, ``mean``, ``std``, ``img_size``, ``model_name``.
        Versions logged without metadata get their classes from the run's ``model_info/classes.json``.

    Raises:
        ValueError: one line, for a name, version or alias the registry does not have, or a model that is not
            a PyTorch module.
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    from fovea.distill import parse_registry_uri

    name, version, alias = parse_registry_uri(model_uri)
    client = _client(tracking_uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as err:
        raise ValueError(f"{model_uri} not found in the registry at {tracking_uri} ({_first_line(err)})") from None
    _use_store(tracking_uri)
    versioned = f"models:/{name}/{found.version}"
    try:
        model_info = mlflow.models.get_model_info(versioned)
        module = mlflow.pytorch.load_model(versioned, map_location="cpu")
    except MlflowException as err:
        raise ValueError(f"{model_uri}: could not load version {found.version} ({_first_line(err)})") from None
    if not hasattr(module, "state_dict"):
        raise ValueError(f"{model_uri}: version {found.version} is not a PyTorch module")
    info: dict[str, Any] = {"version": str(found.version), "run_id": found.run_id, **(model_info.metadata or {})}
    if "classes" not in info and found.run_id:
        try:
            path = client.download_artifacts(found.run_id, "model_info/classes.json")
            info["classes"] = json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            pass  # a model registered by other tools: its classes are unknown, only their count can be checked
    return module.eval(), info


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", "") or err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__
