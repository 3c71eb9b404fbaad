"""The final model in the registry: logged with its pickle-free copy, and that copy downloaded again."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fovea.errors import first_line
from fovea.model_folder import save_model_dir
from fovea.secrets import redact
from fovea.track import store

PLAIN_DIR = "extra_files"  # where a logged model keeps fovea's pickle-free copy (MLflow's name for extra files)


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
            ``load_registered_model`` hands back with the module. With ``model_name`` and ``create_kwargs`` (how
            ``fovea.models.create_model`` rebuilds the architecture) the version also carries a pickle-free copy,
            ``extra_files/`` = ``weights.pt`` (+ ``.sha256``) and ``fovea_model.json``: the only form
            ``load_registered_model`` reads.
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
    metadata = {**(metadata or {}), **({"classes": list(classes)} if classes is not None else {})}
    store.use_store(uri)
    with mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory() as tmp:
        # the pickle-free copy (weights.pt + fovea_model.json) that fovea itself loads the version from
        plain = save_model_dir(Path(tmp) / PLAIN_DIR, model, metadata) if _rebuildable(metadata) else None
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements,
            # MLflow 3 defaults to torch.export ("pt2"), which fixes the batch size to the input example's and
            # makes load_model return a graph, not the nn.Module people fine-tune; pickle keeps the module. fovea
            # never loads this pickle (see load_registered_model): it is there for MLflow's own tools.
            serialization_format="pickle",
            metadata=redact(metadata),
            extra_files=sorted(str(path) for path in plain.iterdir()) if plain is not None else None,
            registered_model_name=registered_model_name,
            await_registration_for=60,
        )
        if classes is not None:
            path = Path(tmp) / "classes.json"
            path.write_text(json.dumps(classes, indent=1))
            mlflow.log_artifact(str(path), artifact_path="model_info")
    version = getattr(info, "registered_model_version", None)
    if registered_model_name and version is not None:
        client = store.client(uri)
        for key, value in version_tags.items():
            client.set_model_version_tag(registered_model_name, str(version), key, value)
        if description:
            client.update_model_version(registered_model_name, str(version), description=description)
        if alias:
            client.set_registered_model_alias(registered_model_name, alias, str(version))
        return str(version)
    return None


def _rebuildable(metadata: dict[str, Any]) -> bool:
    """Whether ``metadata`` says how to rebuild the architecture (what a pickle-free copy needs)."""
    return bool(metadata.get("model_name")) and isinstance(metadata.get("create_kwargs"), dict)


def download_registered_model(model_uri: str, tracking_uri: str, dst: str | Path) -> tuple[Path, dict[str, Any]]:
    """Download a registered version's pickle-free copy, from ``models:/NAME/VERSION`` or ``@ALIAS``, into ``dst``.

    Nothing is unpickled and nothing is built here: ``log_final_model`` adds the copy (``extra_files/weights.pt``
    with its ``.sha256``, and ``fovea_model.json``) to every version fovea registers; ``fovea.sources`` loads it.

    Returns:
        ``(folder, info)``: the downloaded folder, and ``info`` with ``version`` (the alias resolved), ``run_id``,
        ``plain_uri`` (the copy's artifact URI, for messages) and ``run_classes`` (the run's
        ``model_info/classes.json``, or None).

    Raises:
        ValueError: one line, for a name, version or alias the registry does not have, or a version with no
            pickle-free copy.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from fovea.refs import parse_registry_uri

    name, version, alias = parse_registry_uri(model_uri)
    client = store.client(tracking_uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as err:
        raise ValueError(f"{model_uri} not found in the registry at {tracking_uri} ({first_line(err)})") from None
    store.use_store(tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    plain_uri = f"models:/{name}/{found.version}/{PLAIN_DIR}"
    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=plain_uri, dst_path=str(dst)))
    except (MlflowException, OSError):
        folder = None
    if folder is None or not ((folder / "weights.pt").is_file() and (folder / "fovea_model.json").is_file()):
        raise ValueError(
            f"{model_uri}: version {found.version} has no pickle-free weights ({PLAIN_DIR}/weights.pt and "
            "fovea_model.json, which fovea logs with every version it registers); fovea never unpickles a "
            "registered MLflow model, so it cannot load this one"
        )
    run_classes = None
    if found.run_id:
        try:
            classes_file = client.download_artifacts(found.run_id, "model_info/classes.json")
            run_classes = json.loads(Path(classes_file).read_text())
        except (MlflowException, OSError, ValueError):
            pass  # its classes are unknown, only their count can be checked
    return folder, {
        "version": str(found.version),
        "run_id": found.run_id,
        "plain_uri": plain_uri,
        "run_classes": run_classes,
    }
