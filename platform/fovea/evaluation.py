"""Evaluate a trained classifier on a prepared dataset's split: single-view and multi-view top-1/top-5, loss,
per-class accuracy and the confusion matrix (``jobs/evaluate.py``).

The model comes from the MLflow registry (``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``NAME@ALIAS``), a fovea
training checkpoint (``checkpoint.pt``, its folder, or a run folder of checkpoints) or a folder written by
``fovea models download`` (``weights.pt`` + ``fovea_model.json``). Checkpoints and weights load with
``torch.load(weights_only=True)``. What the model recorded about its input (resolution, clip length and sampling,
normalisation, and the evaluation crop ``crop_pct`` unless the config sets it) wins over the config's defaults: a
model is scored on the input it was trained for.

Views:

- ``single``: the centre view, as the training jobs' per-epoch validation sees it (resize the short side to
  ``img_size / crop_pct``, centre crop; for video the centre clip).
- ``multi``: images: ``data.num_spatial_crops`` crops spread evenly along the longer side of the resized image,
  centred on the shorter side (the 3-crop test of SlowFast, applied to images; a square image's crops go left to
  right, and with ``crop_pct=1`` they coincide); video: ``data.num_temporal_clips x data.num_spatial_crops`` clips.
  ``eval.flip_views`` adds each view's horizontal flip. A sample's score is the mean of its views' logits.
- ``both``: single, plus multi when that means more than one view.

Scoring runs in this process (the Ray driver) over ``iter_torch_batches`` of a Ray Data pipeline that decodes on
the cluster's CPUs: on CUDA when ``scaling.use_gpu`` and a GPU is here, else on the CPU. A distillation-token DeiT
is scored on the mean of its two heads, as it predicts.
"""

from __future__ import annotations

import io
import json
import math
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from fovea.config import Config, ConfigError, build_config
from fovea.data.manifest import location_label

if TYPE_CHECKING:
    import ray.data

SourceKind = Literal["registry", "checkpoint", "folder"]

_ALIAS_SHORTHAND = re.compile(r"^[^/@\s]+@[\w.-]+$")  # NAME@ALIAS, without models:/
CHECKPOINT_FILE = "checkpoint.pt"
INPUT_KEYS = ("img_size", "mean", "std", "crop_pct", "num_frames", "frame_interval", "sampling")


# --------------------------------------------------------------------------------------------------------------------
# Model sources
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class EvalModel:
    """A model to evaluate, on the CPU in eval mode, with what is known about it.

    Attributes:
        module: the network.
        source: ``eval.model`` as given.
        kind: ``registry``, ``checkpoint`` or ``folder``.
        location: where the weights were read: ``models:/NAME/VERSION`` (alias resolved) or a file/folder path.
        model_name: the architecture's registered name ('' when the source does not record it).
        classes: the class names in logit order (None when the source does not record them).
        inputs: the input settings the source recorded (keys of ``INPUT_KEYS``).
        registered_model: the registry name (registry sources).
        version: the registry version (registry sources).
        source_run_id: the MLflow run that trained it, when known.
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

    @property
    def label(self) -> str:
        """A short name for run names and summaries: the registry name, else the architecture."""
        return self.registered_model or self.model_name or Path(self.location).stem


def source_kind(spec: str) -> tuple[SourceKind | Literal["path"], str]:
    """How an ``eval.model`` value is read: ``("registry", "models:/...")`` (``NAME@ALIAS`` gets its prefix) or
    ``("path", path)`` for a checkpoint or model folder (which one is decided once the path is looked at)."""
    spec = spec.strip()
    if spec.startswith("models:/"):
        return "registry", spec
    if not Path(spec).expanduser().exists() and _ALIAS_SHORTHAND.match(spec):
        return "registry", f"models:/{spec}"
    return "path", spec


def resolve_path_source(spec: str) -> tuple[SourceKind, Path]:
    """The checkpoint file or model folder an ``eval.model`` path names.

    Accepts ``checkpoint.pt`` (any ``torch.save`` file of a fovea training state), a folder holding one, a training
    run's folder of ``checkpoint_*/`` folders (the most recently written checkpoint is taken), and a model folder
    (``weights.pt`` + ``fovea_model.json``).

    Raises:
        ValueError: one line saying what the path is not.
    """
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
    return {key: info[key] for key in INPUT_KEYS if info.get(key) is not None}


def load_checkpoint_model(path: Path, source: str) -> EvalModel:
    """The model of a fovea training checkpoint, rebuilt from the config it records (``weights_only`` load).

    Raises:
        ValueError: the file is not a fovea checkpoint.
    """
    from fovea.checkpoints import load_verified
    from fovea.models import create_model, is_video_model
    from fovea.recipe import checkpoint_create_args

    state = load_verified(path)  # a CheckpointError (ValueError): unreadable, corrupt, or needing unpickling
    if not (isinstance(state, dict) and {"model", "config", "classes"} <= set(state)):
        raise ValueError(f"{path}: not a fovea training checkpoint (needs model, config and classes)")
    config = json.loads(state["config"])
    model_cfg, data_cfg = config["model"], config.get("data", {})
    name, classes = model_cfg["name"], list(state["classes"])
    video = is_video_model(name)
    module = create_model(name, **checkpoint_create_args(state, config, num_classes=len(classes)))
    module.load_state_dict(state["model"])
    from fovea.models import model_statistics

    mean, std = map(list, model_statistics(module))
    inputs: dict[str, Any] = {
        "img_size": model_cfg.get("img_size"),
        "mean": list(data_cfg.get("mean") or mean),
        "std": list(data_cfg.get("std") or std),
        "crop_pct": data_cfg.get("crop_pct"),
    }
    if video:
        inputs.update({key: data_cfg.get(key) for key in ("num_frames", "frame_interval", "sampling")})
    return EvalModel(
        module=module.eval(),
        source=source,
        kind="checkpoint",
        location=str(path),
        model_name=name,
        classes=classes,
        inputs=_recorded_inputs(inputs),
        source_run_id=state.get("mlflow_run_id") or None,
    )


def load_folder_model(path: Path, source: str) -> EvalModel:
    """The model of a ``fovea models download`` folder (``weights.pt`` loaded with ``weights_only``)."""
    from fovea.models import load_model_dir

    module, info = load_model_dir(path)
    from fovea.models import model_statistics

    mean, std = map(list, model_statistics(module))
    inputs = {"mean": mean, "std": std, **_recorded_inputs(info)}
    return EvalModel(
        module=module,
        source=source,
        kind="folder",
        location=str(path),
        model_name=str(info.get("model_name", "")),
        classes=list(info["classes"]) if info.get("classes") else None,
        inputs=inputs,
        registered_model=info.get("registered_name") or None,  # a downloaded copy of a registered version
        version=str(info["version"]) if info.get("version") is not None else None,
        source_run_id=info.get("run_id") or None,
    )


def load_registry_model(uri: str, source: str, tracking_uri: str) -> EvalModel:
    """A registered model version (the alias resolved), with the metadata fovea recorded when it was logged.

    The training run's recorded ``data.crop_pct`` is used when the run can be read (the registry metadata does not
    hold it).
    """
    from fovea.refs import parse_registry_uri
    from fovea.sources import load_registered_model
    from fovea.track import run_params

    name, _, _ = parse_registry_uri(uri)
    module, info = load_registered_model(uri, tracking_uri)
    from fovea.models import model_statistics

    mean, std = map(list, model_statistics(module))
    inputs = {"mean": mean, "std": std, **_recorded_inputs(info)}
    run_id = info.get("run_id") or None
    if run_id:
        crop_pct = run_params(tracking_uri, run_id).get("data.crop_pct")
        if crop_pct not in (None, "", "None"):
            inputs["crop_pct"] = float(crop_pct)
    return EvalModel(
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


def load_eval_model(spec: str, tracking_uri: str) -> EvalModel:
    """Load the model ``eval.model`` names, on the CPU.

    Raises:
        ValueError: one line naming what could not be loaded.
    """
    kind, value = source_kind(spec)
    if kind == "registry":
        return load_registry_model(value, spec, tracking_uri)
    path_kind, path = resolve_path_source(value)
    if path_kind == "folder":
        return load_folder_model(path, spec)
    return load_checkpoint_model(path, spec)


def configure_for_model(cfg: Config, model: EvalModel) -> Config:
    """``cfg`` with the model's recorded input settings: architecture name, ``img_size``, mean/std, video clip
    length, interval and sampling; the recorded ``crop_pct`` unless ``data.crop_pct`` was set explicitly."""
    from fovea.models import is_video_model

    recorded = model.inputs
    model_update: dict[str, Any] = {}
    if model.model_name:
        model_update["name"] = model.model_name
    if recorded.get("img_size"):
        model_update["img_size"] = int(recorded["img_size"])
    data_update: dict[str, Any] = {key: list(recorded[key]) for key in ("mean", "std") if key in recorded}
    if "crop_pct" in recorded and "crop_pct" not in cfg.data.model_fields_set:
        data_update["crop_pct"] = float(recorded["crop_pct"])
    if is_video_model(model.model_name or cfg.model.name):
        data_update.update(
            {key: recorded[key] for key in ("num_frames", "frame_interval", "sampling") if key in recorded}
        )
    return build_config([cfg.model_dump(mode="json"), {"model": model_update, "data": data_update}])


def logit_order(model_classes: list[str] | None, dataset_classes: list[str], source: str) -> list[int] | None:
    """The model's logit columns in the dataset's class order: None when they already agree (or the model does not
    record its classes); a permutation when the same names come in another order.

    Raises:
        ValueError: the names differ; one line saying which are missing from each side.
    """
    if model_classes is None or list(model_classes) == list(dataset_classes):
        return None
    lacking_in_data = sorted(set(model_classes) - set(dataset_classes))
    lacking_in_model = sorted(set(dataset_classes) - set(model_classes))
    if lacking_in_data or lacking_in_model or len(model_classes) != len(dataset_classes):

        def listed(names: list[str]) -> str:
            return ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "") or "none"

        raise ValueError(
            f"{source} was trained on other classes than the dataset's: the dataset lacks {listed(lacking_in_data)}; "
            f"the model lacks {listed(lacking_in_model)}"
        )
    position = {name: index for index, name in enumerate(model_classes)}
    return [position[name] for name in dataset_classes]


# --------------------------------------------------------------------------------------------------------------------
# Views and the evaluation datasets
# --------------------------------------------------------------------------------------------------------------------


def crop_offsets(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """``(top, left)`` of ``num_crops`` squares of ``size``, spread evenly along the longer side (the width of a
    square) and centred on the other; one crop is the centre crop (torchvision's rounding)."""
    offsets = []
    for index in range(num_crops):
        fraction = 0.5 if num_crops == 1 else index / (num_crops - 1)
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
        if height > width:
            top = int(round(fraction * (height - size)))
        else:
            left = int(round(fraction * (width - size)))
        offsets.append((top, left))
    return offsets


class DecodeImageViews:
    """``map_batches`` callable: encoded images to ``{"image": uint8 (N, V, 3, S, S), "label"}``, ``V = num_crops``.

    Each image is decoded and resized exactly as the single view is (``DecodeImages`` in evaluation: short side to
    ``img_size / crop_pct``, bicubic), then cut into ``num_crops`` squares (``crop_offsets``). Rows that do not
    decode are dropped with a warning, as in training.
    """

    def __init__(self, img_size: int, *, crop_pct: float, num_crops: int) -> None:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2 as T

        from fovea.data.transforms import eval_resize_size

        self.img_size, self.num_crops = img_size, num_crops
        resize = T.Resize(eval_resize_size(img_size, crop_pct), interpolation=InterpolationMode.BICUBIC)
        self.transform = T.Compose([resize, T.PILToTensor()])

    def views(self, data: bytes) -> np.ndarray:
        """The ``(V, 3, S, S)`` crops of one encoded image."""
        from PIL import Image, ImageOps

        with Image.open(io.BytesIO(data)) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
        resized = self.transform(rgb)  # (3, H, W), short side img_size / crop_pct
        size = self.img_size
        height, width = resized.shape[-2:]
        crops = [
            resized[:, top : top + size, left : left + size]
            for top, left in crop_offsets(height, width, size, self.num_crops)
        ]
        return torch.stack(crops).numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import logging

        images, labels = [], []
        for data, label in zip(batch["image"], batch["label"], strict=True):
            try:
                images.append(self.views(data))
            except Exception as err:  # noqa: BLE001 - any decoder error: skip the row, never the evaluation
                logging.getLogger(__name__).warning("skipping an image that does not decode (%s)", err)
                continue
            labels.append(label)
        if not images:
            shape = (0, self.num_crops, 3, self.img_size, self.img_size)
            return {"image": np.zeros(shape, np.uint8), "label": np.zeros((0,), np.int64)}
        return {"image": np.stack(images), "label": np.asarray(labels, dtype=np.int64)}


def views_per_sample(cfg: Config, *, video: bool, multi: bool) -> int:
    """Views each sample is scored on (flips included)."""
    if not multi:
        return 1
    crops = cfg.data.num_spatial_crops * (cfg.data.num_temporal_clips if video else 1)
    return crops * (2 if cfg.eval.flip_views else 1)


def view_layout(cfg: Config, *, video: bool) -> str:
    """The multi-view layout in words, e.g. ``5 clips x 3 crops x 2 flips``."""
    clips, crops = cfg.data.num_temporal_clips, cfg.data.num_spatial_crops
    parts = [f"{clips} clip{'s' * (clips > 1)}"] if video else []
    parts.append(f"{crops} crop{'s' * (crops > 1)}")
    if cfg.eval.flip_views:
        parts.append("2 flips")
    return " x ".join(parts)


def build_eval_dataset(manifest: dict[str, Any], split: str, cfg: Config, *, multi: bool) -> ray.data.Dataset:
    """The decoded evaluation views of one split, uint8: images ``(N, 3, S, S)`` (single) or ``(N, V, 3, S, S)``,
    clips ``(N, 3, T, S, S)`` or ``(N, V, 3, T, S, S)``. Flips are added on the scoring device, not here."""
    from fovea.data import DecodeClips, DecodeImages, read_split
    from fovea.data.clips import CLIP_COLUMNS
    from fovea.data.stream import clip_spec

    batch = cfg.data.decode_batch_size
    if manifest.get("kind") == "video":
        spec = clip_spec(cfg.data, img_size=cfg.model.img_size, num_frames=cfg.data.num_frames)
        if not multi:
            spec = replace(spec, num_temporal_clips=1, num_spatial_crops=1)
        decode: Any = DecodeClips(
            spec,
            train=False,
            storage=manifest.get("storage", "encoded"),
            backend=cfg.data.video_backend,
            decode_threads=cfg.data.decode_threads,
        )
        rows = read_split(manifest, split, columns=CLIP_COLUMNS)
        views = spec.num_views
    else:
        if multi:
            decode = DecodeImageViews(
                cfg.model.img_size, crop_pct=cfg.data.crop_pct, num_crops=cfg.data.num_spatial_crops
            )
        else:
            decode = DecodeImages(cfg.model.img_size, train=False, crop_pct=cfg.data.crop_pct)
        rows = read_split(manifest, split)
        views = cfg.data.num_spatial_crops if multi else 1
    # views multiply the decoded bytes per row: smaller batches keep blocks a sensible size
    return rows.map_batches(decode, batch_size=max(1, batch // views), batch_format="numpy")


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModeScores:
    """The scores of one mode (single or multi-view) over a split.

    Attributes:
        classes: class names, in the dataset's order (rows and columns of ``confusion``).
        confusion: ``(classes, classes)`` int64 counts, rows = true class, columns = predicted class.
        loss_sum: summed cross-entropy of each sample's (view-averaged) logits.
        top5_hits: samples whose true class is among the 5 highest logits (all of them when there are fewer).
        views: views per sample.
    """

    classes: list[str]
    confusion: np.ndarray
    loss_sum: float
    top5_hits: int
    views: int

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def top1(self) -> float:
        return 100.0 * self.correct / max(1, self.count)

    @property
    def top5(self) -> float:
        return 100.0 * self.top5_hits / max(1, self.count)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.count)

    def per_class(self) -> list[dict[str, Any]]:
        """A row per class: ``class``, ``count`` (samples of it), ``correct`` and ``accuracy`` (percent; NaN when the
        split has none of it)."""
        rows = []
        for index, name in enumerate(self.classes):
            count, correct = int(self.confusion[index].sum()), int(self.confusion[index, index])
            accuracy = 100.0 * correct / count if count else float("nan")
            rows.append({"class": name, "count": count, "correct": correct, "accuracy": accuracy})
        return rows


def eval_device(use_gpu: bool) -> torch.device:
    """CUDA when asked for and present, else the CPU."""
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def score_batches(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    classes: list[str],
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    device: torch.device,
    video: bool,
    flip: bool = False,
    order: list[int] | None = None,
    precision: str = "fp32",
) -> ModeScores:
    """Score every sample of ``batches`` and count each (true, predicted) pair.

    Args:
        model: the classifier (moved to ``device`` and put in eval mode here).
        batches: uint8 ``{"image" or "video": ..., "label": ...}`` batches, one view ``(B, 3, [T,] H, W)`` or several
            ``(B, V, 3, [T,] H, W)`` per sample.
        classes: the dataset's class names (labels index them).
        mean: normalisation mean the model was trained with.
        std: normalisation std.
        device: where the model runs.
        video: batches hold clips.
        flip: add each view's horizontal flip (doubling the views).
        order: the model's logit columns in the dataset's class order (``logit_order``), or None.
        precision: ``fp32``, ``bf16`` or ``auto`` (bf16 autocast on CUDA).

    Raises:
        ValueError: the model gives another number of logits than there are classes.
    """
    from fovea.distill import head_logits
    from fovea.train.loop import Normalize, autocast_dtype, batch_inputs

    model = model.to(device).eval()
    normalize = Normalize(tuple(mean), tuple(std)).to(device)
    dtype = autocast_dtype(precision, device)
    num_classes = len(classes)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, top5_hits, num_views = 0.0, 0, 1
    index = torch.tensor(order) if order is not None else None
    for batch in batches:
        inputs = batch_inputs(batch).to(device, non_blocking=True)
        if inputs.dim() == (5 if video else 4):
            inputs = inputs.unsqueeze(1)  # one view: (B, 1, 3, [T,] H, W)
        if flip:
            inputs = torch.cat([inputs, inputs.flip(-1)], dim=1)  # each view and its mirror image
        num_views = inputs.shape[1]
        flat = normalize(inputs.flatten(0, 1))  # (B*V, 3, [T,] H, W): views are just more samples
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            heads = head_logits(model, flat)
            logits = model(flat) if heads is None else (heads[0] + heads[1]) / 2
        logits = logits.float().unflatten(0, (-1, num_views)).mean(1).cpu()  # (B, classes): mean over views
        if logits.shape[1] != num_classes:
            raise ValueError(f"the model gives {logits.shape[1]} logits, the dataset has {num_classes} classes")
        if index is not None:
            logits = logits[:, index]
        targets = batch["label"].to(torch.int64).cpu()
        predicted = logits.argmax(dim=1)
        confusion += torch.bincount(targets * num_classes + predicted, minlength=num_classes**2).view(
            num_classes, num_classes
        )
        top = logits.topk(min(5, num_classes), dim=1).indices
        top5_hits += int(top.eq(targets[:, None]).any(dim=1).sum())
        loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
    return ModeScores(
        classes=list(classes), confusion=confusion.numpy(), loss_sum=loss_sum, top5_hits=top5_hits, views=num_views
    )


# --------------------------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """A finished evaluation: what was scored, on what, the scores, and where they were recorded."""

    model: EvalModel
    dataset: str
    manifest_hash: str
    split: str
    video: bool
    single: ModeScores | None
    multi: ModeScores | None
    layout: str
    device: str
    crop_pct: float
    wall_time_s: float
    run_id: str | None = None
    tracking_uri: str | None = None
    linked_version: str | None = None
    model_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def modes(self) -> dict[str, ModeScores]:
        """``{metric prefix: scores}``: ``""`` for the single view, ``"mv_"`` for multi-view."""
        found = {"": self.single, "mv_": self.multi}
        return {prefix: scores for prefix, scores in found.items() if scores is not None}

    def metrics(self) -> dict[str, float]:
        """``eval_top1``, ``eval_top5``, ``eval_loss``, ``eval_count`` (``eval_mv_*`` and ``eval_views`` for multi-view)
        and ``class_top1/<class>`` (``class_mv_top1/<class>``) for each class the split has."""
        from fovea.track.evaluation import metric_key

        metrics: dict[str, float] = {}
        for prefix, scores in self.modes().items():
            metrics.update(
                {
                    f"eval_{prefix}top1": scores.top1,
                    f"eval_{prefix}top5": scores.top5,
                    f"eval_{prefix}loss": scores.loss,
                    f"eval_{prefix}count": float(scores.count),
                }
            )
            if prefix:
                metrics["eval_views"] = float(scores.views)
            for row in scores.per_class():
                if row["count"]:
                    metrics[f"class_{prefix}top1/{metric_key(row['class'])}"] = row["accuracy"]
        return metrics

    def headline(self) -> ModeScores:
        """The scores the version's ``last_eval_top1`` tag carries: the single view's, else the multi-view ones."""
        scores = self.single or self.multi
        assert scores is not None
        return scores

    def summary(self) -> dict[str, Any]:
        """Everything as plain JSON (the run's ``evaluation.json``)."""
        return {
            "model": self.model.source,
            "location": self.model.location,
            "model_name": self.model.model_name,
            "registered_model": self.model.registered_model,
            "version": self.model.version,
            "source_run_id": self.model.source_run_id,
            "inputs": self.model.inputs,
            "dataset": self.dataset,
            "manifest_hash": self.manifest_hash,
            "split": self.split,
            "device": self.device,
            "crop_pct": self.crop_pct,
            "metrics": self.metrics(),
            "modes": {
                ("multi" if prefix else "single"): {
                    "views": scores.views,
                    "per_class": [  # strict JSON: a class the split lacks has no accuracy (null, not NaN)
                        {**row, "accuracy": None if math.isnan(row["accuracy"]) else row["accuracy"]}
                        for row in scores.per_class()
                    ],
                    "confusion": scores.confusion.tolist(),
                }
                for prefix, scores in self.modes().items()
            },
            "classes": self.headline().classes,
        }

    def describe(self) -> str:
        """The job's closing summary: the model, the data, the scores, where they were recorded."""
        model = self.model
        what = model.location if model.location != model.source else model.source
        if model.kind == "registry":
            what = f"{model.source} -> {model.registered_model} version {model.version}"
        arch = f" ({model.model_name})" if model.model_name else ""
        unit = "videos" if self.video else "images"
        headline = self.headline()
        lines = [
            f"model          {what}{arch}",
            f"dataset        {self.dataset}, split {self.split}: {headline.count} {unit} "
            f"(manifest {self.manifest_hash})",
        ]
        if self.single is not None:
            lines.append(
                f"single view    top-1 {self.single.top1:.2f}%  (top-5 {self.single.top5:.2f}%, loss "
                f"{self.single.loss:.4f})"
            )
        if self.multi is not None:
            lines.append(
                f"multi-view     top-1 {self.multi.top1:.2f}%  (top-5 {self.multi.top5:.2f}%, loss "
                f"{self.multi.loss:.4f}) over {self.multi.views} views ({self.layout})"
            )
        rows = sorted((r for r in headline.per_class() if r["count"]), key=lambda r: r["accuracy"])
        shown = rows if len(rows) <= 8 else rows[:5]
        label = "per class" if len(rows) <= 8 else "weakest"
        lines.append(
            f"{label:<15}"
            + ", ".join(f"{r['class']} {r['accuracy']:.1f}% ({r['correct']}/{r['count']})" for r in shown)
        )
        lines.append(f"device         {self.device}, wall time {self.wall_time_s:.1f} s")
        lines += [f"note           {note}" for note in self.notes]
        if self.run_id:
            lines.append(f"mlflow run     {self.run_id}  ({self.tracking_uri})")
        if self.linked_version:
            linked = f"linked         {model.registered_model} version {self.linked_version}: last_eval_* tags"
            if self.model_id:
                linked += f"; metrics logged on its logged model {self.model_id}"
            lines.append(linked)
        return "\n".join(lines)


def _dataset_problem(cfg: Config, manifest: dict[str, Any], dataset_dir: Path) -> str | None:
    """Why the split cannot be scored, or None."""
    splits = manifest["splits"]
    if not splits.get(cfg.eval.split, {}).get("shards"):
        names = ", ".join(name for name, info in splits.items() if info.get("shards")) or "none"
        return f"eval.split: {dataset_dir} has no {cfg.eval.split!r} split with data (splits with data: {names})"
    return None


def check_evaluation(cfg: Config) -> None:
    """Checks before anything is loaded or started: a model source is given and well formed, the dataset exists and
    has the split.

    Raises:
        ConfigError: one line naming the field.
    """
    from fovea.data import dataset_location, load_manifest
    from fovea.refs import parse_registry_uri

    spec = cfg.eval.model.strip()
    if not spec:
        raise ConfigError(
            "eval.model: which model? give models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint file or folder, "
            "or a model folder"
        )
    kind, value = source_kind(spec)
    try:
        if kind == "registry":
            parse_registry_uri(value)
        else:
            resolve_path_source(value)
    except ValueError as err:
        raise ConfigError(f"eval.model: {err}") from None
    if cfg.data.path:
        dataset_dir = dataset_location(cfg.data.path)
        try:
            manifest = load_manifest(dataset_dir)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"data.path: {err}") from None
        problem = _dataset_problem(cfg, manifest, dataset_dir)
        if problem:
            raise ConfigError(problem)
    elif cfg.eval.split not in ("train", "val"):
        raise ConfigError(f"eval.split: the built-in demo set has splits train and val, not {cfg.eval.split!r}")


def _check_model_fits(cfg: Config, model: EvalModel, manifest: dict[str, Any], dataset_dir: Path) -> list[int] | None:
    """The dataset kind, split and classes fit the model: returns the logit order (``logit_order``).

    Raises:
        ConfigError: one line.
    """
    from fovea.models import is_video_model

    video = manifest.get("kind") == "video"
    if model.model_name and is_video_model(model.model_name) != video:
        takes = "video clips" if is_video_model(model.model_name) else "images"
        kind = "video" if video else "image"
        raise ConfigError(f"data.path: {dataset_dir} is an {kind} dataset, but {model.source} takes {takes}")
    if video and not cfg.data.path and cfg.eval.flip_views:
        raise ConfigError(
            "eval.flip_views: the demo videos' classes include move_left and move_right, mirror images of each "
            "other; set eval.flip_views=false"
        )
    problem = _dataset_problem(cfg, manifest, dataset_dir)
    if problem:
        raise ConfigError(problem)
    try:
        return logit_order(model.classes, list(manifest["classes"]), model.source)
    except ValueError as err:
        raise ConfigError(f"eval.model: {err}") from None


def run_tags(cfg: Config, result: EvaluationResult) -> dict[str, str]:
    """The evaluation run's tags: its role, the model (as given and as resolved), the training run, the data."""
    from fovea.provenance import git_commit

    model = result.model
    scored = "+".join(name for name, scores in (("single", result.single), ("multi", result.multi)) if scores)
    tags = {
        "fovea.job": cfg.job,
        "fovea.role": "eval",
        "fovea.model_uri": model.source,
        "fovea.model_location": model.location,
        "fovea.model": model.model_name,
        "fovea.dataset": result.dataset,
        "fovea.manifest_hash": result.manifest_hash,
        "fovea.split": result.split,
        "fovea.views": scored,
        "fovea.git_commit": git_commit(),
        "fovea.host": socket.gethostname(),
        "mlflow.note.content": (
            f"Evaluation of {model.source} ({model.location}) on the {result.split} split of {result.dataset} "
            f"(manifest {result.manifest_hash}): {scored} view(s)."
        ),
    }
    if model.registered_model and model.version:
        tags.update({"fovea.registered_model": model.registered_model, "fovea.model_version": model.version})
    if model.source_run_id:
        tags["fovea.source_run_id"] = model.source_run_id
    return {key: value for key, value in tags.items() if value}


def run_params_of(cfg: Config, result: EvaluationResult) -> dict[str, Any]:
    """The evaluation settings, as the run's params."""
    params: dict[str, Any] = {f"eval.{key}": value for key, value in cfg.eval.model_dump(mode="json").items()}
    params.update(
        {
            "model.name": cfg.model.name,
            "model.img_size": cfg.model.img_size,
            "data.path": result.dataset,
            "data.crop_pct": cfg.data.crop_pct,
            "data.mean": list(cfg.data.mean or ()),
            "data.std": list(cfg.data.std or ()),
            "data.num_spatial_crops": cfg.data.num_spatial_crops,
            "data.eval_batch_size": cfg.data.eval_batch_size,
            "views_per_sample": result.multi.views if result.multi is not None else 1,
            "device": result.device,
        }
    )
    if result.video:
        params.update(
            {f"data.{key}": getattr(cfg.data, key) for key in ("num_frames", "frame_interval", "sampling")}
            | {"data.num_temporal_clips": cfg.data.num_temporal_clips}
        )
    return params


def run_evaluation(cfg: Config) -> EvaluationResult:
    """Load the model, score the split (single and/or multi-view), record a new MLflow run linked to the model.

    Raises:
        ConfigError: a model that cannot be loaded, or a dataset that does not fit it (one line).
    """
    from fovea.data import load_manifest, manifest_hash
    from fovea.models import is_video_model
    from fovea.track import resolve_tracking_uri
    from fovea.train.trainer import dataset_dir_of, init_ray

    check_evaluation(cfg)
    started = time.time()
    tracking_uri = resolve_tracking_uri(cfg.track.uri)
    try:
        model = load_eval_model(cfg.eval.model, tracking_uri)
    except (ValueError, OSError, RuntimeError, KeyError, ImportError) as err:
        # state-dict mismatches list every key on its own line: the first line says what is wrong
        raise ConfigError(f"eval.model: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}") from None
    cfg = configure_for_model(cfg, model)
    order = None
    if cfg.data.path:  # check before Ray starts; the demo set is made (with Ray) on first use
        dataset_dir = dataset_dir_of(cfg)
        manifest = load_manifest(dataset_dir)
        order = _check_model_fits(cfg, model, manifest, dataset_dir)
    init_ray()
    if not cfg.data.path:
        dataset_dir = dataset_dir_of(cfg)
        manifest = load_manifest(dataset_dir)
        order = _check_model_fits(cfg, model, manifest, dataset_dir)

    video = manifest.get("kind") == "video" or is_video_model(cfg.model.name)
    classes = list(manifest["classes"])
    notes: list[str] = []
    device = eval_device(cfg.scaling.use_gpu)
    if cfg.scaling.use_gpu and device.type != "cuda":
        notes.append("scaling.use_gpu=true but this machine has no CUDA device: scored on the CPU")
    if order is not None:
        notes.append("the model's classes come in another order than the dataset's: its logits were reordered")
    if model.classes is None:
        notes.append(f"{model.source} records no class names: its logits are taken in the dataset's class order")
    multi_views = views_per_sample(cfg, video=video, multi=True)
    want_single = cfg.eval.views in ("single", "both")
    want_multi = cfg.eval.views == "multi" or (cfg.eval.views == "both" and multi_views > 1)
    batch_size = cfg.eval_batch_size
    mean, std = cfg.data.mean or (), cfg.data.std or ()

    def score(multi: bool) -> ModeScores:
        views = multi_views if multi else 1
        dataset = build_eval_dataset(manifest, cfg.eval.split, cfg, multi=multi)
        batches = dataset.iter_torch_batches(
            batch_size=max(1, batch_size // views), prefetch_batches=cfg.data.prefetch_batches, device="cpu"
        )
        what = f"{views} views ({view_layout(cfg, video=video)})" if multi else "the single centre view"
        print(f"scoring {model.label} on {cfg.eval.split}: {what}", flush=True)
        try:
            return score_batches(
                model.module,
                batches,
                classes=classes,
                mean=mean,
                std=std,
                device=device,
                video=video,
                flip=multi and cfg.eval.flip_views,
                order=order,
                precision=cfg.train.precision,
            )
        except ValueError as err:
            raise ConfigError(f"eval.model: {model.source}: {err}") from None

    single = score(multi=False) if want_single else None
    multi = score(multi=True) if want_multi else None
    result = EvaluationResult(
        model=model,
        dataset=location_label(dataset_dir),
        manifest_hash=manifest_hash(dataset_dir),
        split=cfg.eval.split,
        video=video,
        single=single,
        multi=multi,
        layout=view_layout(cfg, video=video),
        device=str(device),
        crop_pct=cfg.data.crop_pct,
        wall_time_s=0.0,
        notes=notes,
    )
    if cfg.track.enabled:
        record_result(cfg, result, tracking_uri)
    result.wall_time_s = time.time() - started
    return result


def record_result(cfg: Config, result: EvaluationResult, tracking_uri: str) -> None:
    """Log ``result`` as a new MLflow run and link it to the model version; a tracking failure is a warning (the
    scores are printed either way)."""
    from fovea.track import log_evaluation

    model = result.model
    run_name = cfg.train.name or f"eval-{model.label}-{time.strftime('%Y%m%d-%H%M%S')}"
    headline = result.headline()
    version_tags = {
        "last_eval_top1": f"{headline.top1:.2f}",
        "last_eval_top5": f"{headline.top5:.2f}",
        "last_eval_dataset": result.dataset,
        "last_eval_manifest_hash": result.manifest_hash,
        "last_eval_split": result.split,
    }
    if result.multi is not None:
        version_tags["last_eval_mv_top1"] = f"{result.multi.top1:.2f}"
    titles = {
        "": f"{model.label}: {result.split}, single view, top-1 {result.single.top1:.2f}%" if result.single else "",
        "_mv": f"{model.label}: {result.split}, {result.multi.views} views, top-1 {result.multi.top1:.2f}%"
        if result.multi
        else "",
    }
    modes = {
        suffix: (scores, titles[suffix]) for suffix, scores in (("", result.single), ("_mv", result.multi)) if scores
    }
    try:
        record = log_evaluation(
            tracking_uri,
            experiment=cfg.track.experiment,
            run_name=run_name,
            tags=run_tags(cfg, result),
            params=run_params_of(cfg, result),
            metrics=result.metrics(),
            modes=modes,
            summary=result.summary(),
            registered_model=model.registered_model if model.kind == "registry" else None,
            version=model.version if model.kind == "registry" else None,
            link_version=cfg.eval.link_version,
            version_tags=version_tags,
            dataset_name=result.dataset,
            dataset_digest=result.manifest_hash,
        )
    except Exception as err:  # noqa: BLE001 - the scores are printed whatever happens to the tracking store
        result.notes.append(f"not recorded in MLflow ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]})")
        return
    result.run_id, result.tracking_uri = record.run_id, tracking_uri
    result.linked_version, result.model_id = record.linked_version, record.model_id


def evaluation_main(configs_dir: str | Path, description: str = "", argv: list[str] | None = None) -> int:
    """``jobs/evaluate.py``'s whole command line: parse, check (exit 2 on a bad config), evaluate, print the summary."""
    from fovea.jobs import run_command

    def banner(cfg: Config) -> str:
        return f"fovea evaluate: {cfg.eval.model} on {cfg.data.path or 'the demo set'}, split {cfg.eval.split}"

    return run_command(
        "evaluate", configs_dir, description, argv, check=check_evaluation, run=run_evaluation, banner=banner
    )
