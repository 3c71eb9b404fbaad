"""Where a model comes from: a registry URI, a training checkpoint, a downloaded model folder or a model name, loaded
the same way for the teacher, evaluation and prediction. ``fovea.track`` downloads; this module builds.

Every loader returns a ``LoadedModel``: the network on the CPU in eval mode, its classes, the input settings its
source recorded (resolution, normalisation, evaluation crop, clip length and sampling) and where it came from.
Checkpoints and weights load with ``torch.load(weights_only=True)``: nothing is unpickled. Callers that word an
error their own way (the teacher, ``eval.model``) catch ``NotACheckpoint`` or prefix the one-line ``ValueError``.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

SourceKind = Literal["registry", "checkpoint", "folder", "name"]

_ALIAS_SHORTHAND = re.compile(r"^[^/@\s]+@[\w.-]+$")  # NAME@ALIAS, without models:/
INPUT_KEYS = ("img_size", "mean", "std", "crop_pct", "alpha_background", "num_frames", "frame_interval", "sampling")
# the training recipe's flip probability and test-time views: the evaluation job's multi-view defaults
RECIPE_VIEW_KEYS = ("hflip", "num_spatial_crops", "num_temporal_clips")


@dataclass
class LoadedModel:
    """A model on the CPU in eval mode, with what is known about it.

    Attributes:
        module: the network.
        source: the reference as given (``eval.model``, ``distill.teacher``, ...).
        kind: ``registry``, ``checkpoint``, ``folder`` or ``name``.
        location: where the weights were read: ``models:/NAME/VERSION`` (alias resolved), a file/folder path, or
            for a model name its weights file or ``NAME (published weights)``.
        model_name: the architecture's registered name ('' when the source does not record it).
        classes: the class names in logit order (None when the source does not record them).
        inputs: the input settings the source recorded (keys of ``INPUT_KEYS``); ``mean`` and ``std`` always, the
            architecture's own statistics where nothing was recorded.
        registered_model: the registry name (registry sources, and folders downloaded from the registry).
        version: the registry version (likewise).
        source_run_id: the MLflow run that trained it, when known.
        epoch: the epoch a training checkpoint was written after, when it records one.
    """

    module: nn.Module
    source: str
    kind: SourceKind
    location: str
    model_name: str
    classes: list[str] | None
    inputs: dict[str, Any] = field(default_factory=dict)
    registered_model: str | None = None
    version: str | None = None
    source_run_id: str | None = None
    epoch: int | None = None

    @property
    def label(self) -> str:
        """A short name for run names and summaries: the registry name, else the architecture."""
        return self.registered_model or self.model_name or Path(self.location).stem

    @property
    def mean(self) -> tuple[float, ...]:
        """The normalisation mean the model takes its input with."""
        return tuple(self.inputs["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        """The normalisation std."""
        return tuple(self.inputs["std"])


class NotACheckpoint(ValueError):
    """A file that loads but is not a fovea training checkpoint; ``missing`` names what it lacks (``model``,
    ``config``, ``classes``), so a caller can say it in its own words."""

    def __init__(self, message: str, missing: set[str]) -> None:
        super().__init__(message)
        self.missing = missing


def source_kind(spec: str) -> tuple[Literal["registry", "path"], str]:
    """How a model reference is read: ``("registry", "models:/...")`` (``NAME@ALIAS`` gets its prefix) or
    ``("path", path)`` for a checkpoint or model folder (which one is decided once the path is looked at)."""
    spec = spec.strip()
    if spec.startswith("models:/"):
        return "registry", spec
    if not Path(spec).expanduser().exists() and _ALIAS_SHORTHAND.match(spec):
        return "registry", f"models:/{spec}"
    return "path", spec


def resolve_path_source(spec: str) -> tuple[Literal["checkpoint", "folder"], Path]:
    """The checkpoint file or model folder a path names.

    Accepts ``checkpoint.pt`` (any ``torch.save`` file of a fovea training state), a folder holding one, a training
    run's folder of ``checkpoint_*/`` folders (the most recently written checkpoint is taken), and a model folder
    (``weights.pt`` + ``fovea_model.json``).

    Raises:
        ValueError: one line saying what the path is not.
    """
    from fovea.checkpoints import CHECKPOINT_FILE
    from fovea.models import is_model_dir

    path = Path(spec).expanduser()
    if path.is_file():
        return "checkpoint", path
    if not path.exists():
        raise ValueError(f"no such checkpoint file or model folder: {spec}")
    if is_model_dir(path):
        return "folder", path
    if (path / CHECKPOINT_FILE).is_file():
        return "checkpoint", path / CHECKPOINT_FILE
    checkpoints = sorted(path.glob(f"*/{CHECKPOINT_FILE}"), key=lambda file: file.stat().st_mtime)
    if checkpoints:
        return "checkpoint", checkpoints[-1]
    raise ValueError(
        f"{spec} holds neither {CHECKPOINT_FILE} (a fovea checkpoint or run folder) nor weights.pt + "
        "fovea_model.json (a model folder)"
    )


def _recorded_inputs(info: dict[str, Any]) -> dict[str, Any]:
    return {key: info[key] for key in INPUT_KEYS + RECIPE_VIEW_KEYS if info.get(key) is not None}


def _statistics(module: nn.Module) -> dict[str, list[float]]:
    """The architecture's own mean and std, for a source that records none."""
    from fovea.models import model_statistics

    mean, std = map(list, model_statistics(module))
    return {"mean": mean, "std": std}


def load_checkpoint_model(path: Path, source: str, *, num_classes: int = 0) -> LoadedModel:
    """The model of a fovea training checkpoint, rebuilt from the config it records (``weights_only`` load).

    Args:
        path: the checkpoint file.
        source: the reference as given.
        num_classes: the head size of a checkpoint that records no classes (``<= 0``: such a checkpoint is refused).

    Raises:
        NotACheckpoint: the file lacks ``model`` or ``config``, or records no classes and ``num_classes <= 0`` (a
            ``.safetensors`` file holds plain weights: never a training checkpoint).
        ValueError: (a ``CheckpointError``) the file is unreadable, corrupt, would need unpickling, or records a
            config or weights the model cannot be rebuilt from.
    """
    from fovea.checkpoints import CheckpointError, load_verified
    from fovea.errors import joined_lines
    from fovea.models import is_video_model

    needs = "model, config and classes" if num_classes <= 0 else "model and config"
    if path.suffix == ".safetensors":  # plain weights: a model name and a weights file say what to build
        raise NotACheckpoint(f"{path}: not a fovea training checkpoint (needs {needs})", {"model", "config"})
    state = load_verified(path)  # a CheckpointError (ValueError): unreadable, corrupt, or needing unpickling
    if not isinstance(state, dict):
        state = {}
    classes = state.get("classes") or None
    missing = {"model", "config"} - set(state)
    if classes is None and num_classes <= 0:
        missing.add("classes")
    if missing:
        raise NotACheckpoint(f"{path}: not a fovea training checkpoint (needs {needs})", missing)
    try:
        module, name, config = _rebuild(state, classes, num_classes)
    except (KeyError, TypeError, AttributeError, RuntimeError, json.JSONDecodeError) as err:
        reason = f"{type(err).__name__}: {joined_lines(err)[:300]}"
        raise CheckpointError(f"{path}: not a usable fovea checkpoint ({reason})") from None
    classes = list(classes) if classes else None
    data_cfg = config.get("data") or {}
    model_cfg = config["model"]
    from fovea.recipe import checkpoint_normalization

    recorded = checkpoint_normalization(state)
    statistics = {"mean": recorded[0], "std": recorded[1]} if recorded else _statistics(module)
    inputs: dict[str, Any] = {
        "img_size": model_cfg.get("img_size"),
        "mean": list(data_cfg.get("mean") or statistics["mean"]),
        "std": list(data_cfg.get("std") or statistics["std"]),
        "crop_pct": data_cfg.get("crop_pct"),
        "alpha_background": data_cfg.get("alpha_background"),
        **{key: data_cfg.get(key) for key in RECIPE_VIEW_KEYS},
    }
    if is_video_model(name):
        inputs.update({key: data_cfg.get(key) for key in ("num_frames", "frame_interval", "sampling")})
    epoch = state.get("epoch")
    return LoadedModel(
        module=module.eval(),
        source=source,
        kind="checkpoint",
        location=str(path),
        model_name=name,
        classes=classes,
        inputs=_recorded_inputs(inputs),
        source_run_id=state.get("mlflow_run_id") or None,
        epoch=int(epoch) if isinstance(epoch, int) else None,
    )


def _rebuild(state: dict[str, Any], classes: Any, num_classes: int) -> tuple[nn.Module, str, dict[str, Any]]:
    """A checkpoint's model rebuilt from its recorded config and loaded with its weights: ``(module, name, config)``.

    Raises:
        KeyError, TypeError, RuntimeError, ValueError: the checkpoint records what no fovea run writes.
    """
    from fovea.models import create_model
    from fovea.recipe import checkpoint_create_args

    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise TypeError(f"its classes are a {type(classes).__name__}, not a list of names")
    config = json.loads(state["config"])
    name = config["model"]["name"]
    size = len(classes) if classes else num_classes
    module = create_model(name, **checkpoint_create_args(state, config, num_classes=size))
    module.load_state_dict(state["model"])
    return module, name, config


def load_folder_model(path: Path, source: str) -> LoadedModel:
    """The model of a ``fovea models download`` folder (``weights.pt`` loaded with ``weights_only``)."""
    from fovea.models import load_model_dir

    module, info = load_model_dir(path)
    return LoadedModel(
        module=module,
        source=source,
        kind="folder",
        location=str(path),
        model_name=str(info.get("model_name", "")),
        classes=list(info["classes"]) if info.get("classes") else None,
        inputs={**_statistics(module), **_recorded_inputs(info)},
        registered_model=info.get("registered_name") or None,  # a downloaded copy of a registered version
        version=str(info["version"]) if info.get("version") is not None else None,
        source_run_id=info.get("run_id") or None,
    )


def load_registered_model(model_uri: str, tracking_uri: str) -> tuple[nn.Module, dict[str, Any]]:
    """A registered model and what fovea recorded about it, from ``models:/NAME/VERSION`` or ``@ALIAS``.

    Nothing is unpickled: the version's pickle-free copy (``weights.pt``, checked against its ``.sha256`` and read
    with ``torch.load(weights_only=True)``, and ``fovea_model.json``, whose ``model_name`` and ``create_kwargs``
    rebuild the architecture) is loaded, never the pickled MLflow model.

    Returns:
        ``(module, info)``: the ``nn.Module`` on the CPU in eval mode, and ``info`` with ``version`` (the alias
        resolved), ``run_id``, and what was recorded: ``model_name``, ``create_kwargs``, ``classes``, ``mean``,
        ``std``, ``img_size`` and for video the clip sampling. Classes not recorded with the version come from the
        run's ``model_info/classes.json`` when it has one.

    Raises:
        ValueError: one line, for a name, version or alias the registry does not have, a version with no
            pickle-free copy, or a copy that does not verify or load.
    """
    from fovea.errors import first_line
    from fovea.models import load_model_dir
    from fovea.track import download_registered_model

    with tempfile.TemporaryDirectory(prefix="fovea-model-") as tmp:
        folder, found = download_registered_model(model_uri, tracking_uri, tmp)
        try:
            module, recorded = load_model_dir(folder)
        except (ValueError, RuntimeError, TypeError, KeyError) as err:  # corrupt copy, or weights that do not fit
            raise ValueError(f"{model_uri}: {first_line(err).replace(str(folder), found['plain_uri'])}") from None
    info: dict[str, Any] = {**recorded, "version": found["version"], "run_id": found["run_id"]}
    if "classes" not in info and found["run_classes"] is not None:
        info["classes"] = found["run_classes"]
    return module, info


def load_registry_model(uri: str, source: str, tracking_uri: str, *, run_settings: bool = False) -> LoadedModel:
    """A registered model version (the alias resolved), with the metadata fovea recorded when it was logged.

    Args:
        uri: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.
        source: the reference as given.
        tracking_uri: the tracking server holding the registry.
        run_settings: also take the training run's recorded ``data.crop_pct`` (the registry metadata does not hold
            it) when the run can be read: the evaluation crop the model was validated with.
    """
    from fovea.refs import parse_registry_uri

    name, _, _ = parse_registry_uri(uri)
    module, info = load_registered_model(uri, tracking_uri)
    inputs = {**_statistics(module), **_recorded_inputs(info)}
    run_id = info.get("run_id") or None
    if run_id and run_settings:
        from fovea.track import run_params

        crop_pct = run_params(tracking_uri, run_id).get("data.crop_pct")
        if crop_pct not in (None, "", "None"):
            inputs["crop_pct"] = float(crop_pct)
    return LoadedModel(
        module=module,
        source=source,
        kind="registry",
        location=f"models:/{name}/{info['version']}",
        model_name=str(info.get("model_name", "")),
        classes=list(info["classes"]) if info.get("classes") else None,
        inputs=inputs,
        registered_model=name,
        version=str(info["version"]),
        source_run_id=run_id,
    )


def _head_size(name: str, checkpoint: str) -> int:
    """The number of classes a model's weights were trained for (its classifier's rows)."""
    from timm.models import get_pretrained_cfg_value

    from fovea.weights import NATIVE, detect_layout, read_weights

    classifier = get_pretrained_cfg_value(name, "classifier") or "head"
    if not checkpoint:
        return int(get_pretrained_cfg_value(name, "num_classes") or 1000)
    source = read_weights(Path(checkpoint).expanduser())
    layout = detect_layout(source)
    if layout is not NATIVE:  # a published layout names its classifier its own way: its describe() reads it
        rows = layout.describe(source).num_classes
        if rows is None:
            raise ValueError(f"{checkpoint}: its {layout.name} classifier's size is unknown, so its classes are too")
        return rows
    first = classifier if isinstance(classifier, str) else classifier[0]
    weight = source.state.get(f"{first}.weight")
    if weight is None or weight.dim() < 1:
        raise ValueError(f"{checkpoint}: no {first}.weight classifier for {name}, so its classes are unknown")
    return int(weight.shape[0])


def load_named_model(
    name: str, *, num_classes: int, img_size: int, checkpoint: str = "", pretrained: bool = False
) -> LoadedModel:
    """A timm or fovea architecture with weights from a local file (``checkpoint``) or timm's published weights.

    The weights must include a classifier for ``num_classes`` (``num_classes <= 0``: as many as the weights'
    classifier has): nothing is skipped, since a model with a fresh head would score noise. The caller checks that
    there are weights at all (``checkpoint`` or ``pretrained``) and that the file exists.

    Raises:
        ValueError: one line: the weights' classifier does not fit, or its size cannot be read.
    """
    from fovea.models import create_model, load_weights

    if num_classes <= 0:
        num_classes = _head_size(name, checkpoint)
    module = create_model(name, num_classes=num_classes, img_size=img_size, pretrained=pretrained)
    if checkpoint:
        loaded = load_weights(module, Path(checkpoint).expanduser())
        if loaded.reset_head:
            keys = ", ".join(loaded.reset_head[:4])
            raise ValueError(f"{checkpoint}: its classifier does not fit {num_classes} classes ({keys})")
    return LoadedModel(
        module=module.eval(),
        source=name,
        kind="name",
        location=checkpoint or f"{name} (published weights)",
        model_name=name,
        classes=None,
        inputs=_statistics(module),
    )


def start_weights_path(spec: str, tracking_uri: str) -> Path:
    """The local weights a ``model.checkpoint`` names: the path itself, or for ``models:/NAME@ALIAS`` (or
    ``/VERSION``, or ``NAME@ALIAS``) the version's pickle-free folder, downloaded once per node into
    ``$FOVEA_HOME/registry/NAME/vVERSION`` (an interrupted download never leaves a folder there).

    Raises:
        ValueError: one line: a name, version or alias the registry does not have, or no pickle-free copy.
    """
    import os

    from fovea.paths import fovea_home

    kind, value = source_kind(spec)
    if kind == "path":
        return Path(value).expanduser()
    from fovea.refs import parse_registry_uri
    from fovea.track import download_registered_model, registered_version

    cache = fovea_home() / "registry"
    registered = parse_registry_uri(value)[0]
    version = registered_version(value, tracking_uri)  # an alias resolved once: what is cached is what is named
    final = cache / re.sub(r"[^A-Za-z0-9._-]", "_", registered) / f"v{version}"
    if (final / "weights.pt").is_file():  # this node has it already (the driver's check, another worker)
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        folder, _ = download_registered_model(f"models:/{registered}/{version}", tracking_uri, tmp)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(folder, final)  # atomic: another worker on this node may have just done the same
        except OSError:
            if not (final / "weights.pt").is_file():
                raise
    return final


def load_model(spec: str, tracking_uri: str) -> LoadedModel:
    """Load the model a reference names, on the CPU: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``NAME@ALIAS``, a checkpoint file, a run folder or a model folder (see ``source_kind``,
    ``resolve_path_source``). A registered model takes its training run's ``data.crop_pct`` too.

    Raises:
        ValueError: one line naming what could not be loaded.
    """
    kind, value = source_kind(spec)
    if kind == "registry":
        return load_registry_model(value, spec, tracking_uri, run_settings=True)
    path_kind, path = resolve_path_source(value)
    if path_kind == "folder":
        return load_folder_model(path, spec)
    return load_checkpoint_model(path, spec)
