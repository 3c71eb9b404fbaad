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
    raw_example: bytes | None = None,
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
        raw_example: an encoded image or clip (a dataset's file) as the raw-input pyfunc's input example; None: a
            rendered demo one. A version with a pickle-free copy is logged by ``fovea.track.pyfunc.log_classifier``
            (its pyfunc takes bytes, paths and pixel arrays and answers class names; the ``pytorch`` flavor beside
            it); one without, as a plain ``mlflow.pytorch`` model taking ``input_example``'s tensors.

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
        if plain is not None:
            from fovea.track.pyfunc import log_classifier

            # a clip model records its clip length (fovea.recipe.create_args_of; importing records it too)
            video = bool(metadata.get("num_frames") or metadata["create_kwargs"].get("num_frames"))
            requirements += [f"torchvision=={torchvision_version()}", "pillow", "pandas", *(["av"] if video else [])]
            info = log_classifier(
                model,
                plain_dir=plain,
                info=metadata,
                video=video,
                raw_example=raw_example,
                pip_requirements=requirements,
                metadata=redact(metadata),
                registered_model_name=registered_model_name,
            )
        else:
            info = None
        info = info or mlflow.pytorch.log_model(
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


def torchvision_version() -> str:
    """The installed torchvision's version, without a local build suffix (``+cu128``)."""
    import torchvision

    return str(torchvision.__version__).split("+")[0]


def _rebuildable(metadata: dict[str, Any]) -> bool:
    """Whether ``metadata`` says how to rebuild the architecture (what a pickle-free copy needs)."""
    return bool(metadata.get("model_name")) and isinstance(metadata.get("create_kwargs"), dict)


def _model_version(model_uri: str, tracking_uri: str) -> Any:
    """The registry's ModelVersion that ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` names."""
    from mlflow.exceptions import MlflowException

    from fovea.refs import parse_registry_uri

    name, version, alias = parse_registry_uri(model_uri)
    client = store.client(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as err:
        raise ValueError(f"{model_uri} not found in the registry at {tracking_uri} ({first_line(err)})") from None


def registered_version(model_uri: str, tracking_uri: str) -> str:
    """The version number ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` names (the alias resolved), with no
    download.

    Raises:
        ValueError: one line, for a name, version or alias the registry does not have.
    """
    return str(_model_version(model_uri, tracking_uri).version)


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

    name, _, _ = parse_registry_uri(model_uri)
    client = store.client(tracking_uri)
    found = _model_version(model_uri, tracking_uri)
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


def register_imported_model(
    uri: str,
    model: Any,
    *,
    name: str,
    experiment: str,
    input_example: Any,
    metadata: dict[str, Any],
    source: dict[str, Any],
    alias: str = "base",
) -> tuple[str, str]:
    """Register converted published weights as a new version of ``name`` (an import run in ``experiment`` holds it).

    Args:
        metadata: as ``log_final_model``'s (``model_name``, ``create_kwargs``, normalisation, clip, classes).
        source: what ``fovea weights inspect`` found: ``path``, ``sha256``, ``layout``; recorded as the run's
            params and the version's tags (``source_sha256``, ``source_layout``, ``source_file``).
        alias: pointed at the new version (``models:/NAME@base`` then starts a fine-tuning run from it).

    Returns:
        ``(run_id, version)``.
    """
    import mlflow

    store.use_store(uri)
    experiment_id = store.ensure_experiment(uri, experiment)
    tags = {
        "source_file": Path(str(source["path"])).name,
        "source_sha256": str(source["sha256"]),
        "source_layout": str(source["layout"]),
        "model_name": str(metadata["model_name"]),
        "architecture": type(model).__name__,
        "num_classes": str(metadata["create_kwargs"].get("num_classes", "")),
        "imported": "true",
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"import {tags['source_file']}") as run:
        mlflow.set_tags({"fovea.kind": "import", **tags})
        mlflow.log_params({"source.path": str(source["path"]), "source.layout": tags["source_layout"]})
        run_id = run.info.run_id
    classes = metadata.get("classes")
    description = (
        f"{metadata['model_name']} imported from {source['path']} ({tags['source_layout']} layout, SHA-256 "
        f"{tags['source_sha256']}); normalise inputs with mean {metadata.get('mean')} and std {metadata.get('std')}"
    )
    version = log_final_model(
        uri,
        run_id,
        model,
        input_example=input_example,
        registered_model_name=name,
        version_tags=tags,
        description=description,
        classes=list(classes) if classes else None,
        metadata=metadata,
        alias=alias,
    )
    return run_id, str(version)
