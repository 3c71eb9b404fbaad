"""The evaluation job (``jobs/evaluate.py``): score a trained classifier on a prepared dataset's split, single-view
and multi-view top-1/top-5, loss, per-class accuracy and the confusion matrix, and record them in a new MLflow run
linked to the model.

The model comes from the MLflow registry (``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``NAME@ALIAS``), a fovea
training checkpoint (``checkpoint.pt``, its folder, or a run folder of checkpoints) or a folder written by
``fovea models download`` (``weights.pt`` + ``fovea_model.json``), loaded by ``fovea.sources``. Checkpoints and
weights load with ``torch.load(weights_only=True)``. What the model recorded about its input (resolution, clip length
and sampling, normalisation, and the evaluation crop ``crop_pct`` unless the config sets it) wins over the config's
defaults: a model is scored on the input it was trained for.

Views (``fovea.data.eval_views``): ``single`` (the centre view, as training's validation sees it), ``multi``
(spatial crops, temporal clips and ``eval.flip_views`` flips) or ``both`` (single, plus multi when that means more
than one view).

Scoring (``fovea.evaluate.score``) runs in this process (the Ray driver) over ``iter_torch_batches`` of a Ray Data
pipeline that decodes on the cluster's CPUs: on CUDA when ``scaling.use_gpu`` and a GPU is here, else on the CPU. A
distillation-token DeiT is scored on the mean of its two heads, as it predicts.
"""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fovea.config import Config, ConfigError, build_config
from fovea.data.eval_views import build_eval_dataset, view_layout, views_per_sample
from fovea.data.manifest import location_label
from fovea.errors import first_line, typed_line
from fovea.evaluate.score import score_batches
from fovea.evaluate.scoring import ModeScores, eval_device
from fovea.sources import LoadedModel, load_model, resolve_path_source, source_kind

# --------------------------------------------------------------------------------------------------------------------
# The model and the dataset
# --------------------------------------------------------------------------------------------------------------------


def configure_for_model(cfg: Config, model: LoadedModel) -> Config:
    """``cfg`` with the model's recorded input settings: architecture name, ``img_size``, mean/std, video clip
    length, interval and sampling; the recorded ``crop_pct`` and ``alpha_background`` unless the config sets them.

    The multi-view defaults follow the training recipe (``recipe_views``) unless the config sets them: flip views
    only for a model trained with flips (``data.hflip > 0``), its ``data.num_spatial_crops`` and (video)
    ``data.num_temporal_clips``."""
    from fovea.models import is_video_model

    recorded = model.inputs
    recipe = recipe_views(cfg, model)
    eval_update: dict[str, Any] = {}
    if "hflip" in recipe and "flip_views" not in cfg.eval.model_fields_set:
        eval_update["flip_views"] = float(recipe["hflip"]) > 0
    model_update: dict[str, Any] = {}
    if model.model_name:
        model_update["name"] = model.model_name
    if recorded.get("img_size"):
        model_update["img_size"] = int(recorded["img_size"])
    data_update: dict[str, Any] = {key: list(recorded[key]) for key in ("mean", "std") if key in recorded}
    if "crop_pct" in recorded and "crop_pct" not in cfg.data.model_fields_set:
        data_update["crop_pct"] = float(recorded["crop_pct"])
    if "alpha_background" in recorded and "alpha_background" not in cfg.data.model_fields_set:
        data_update["alpha_background"] = recorded["alpha_background"]
    video = is_video_model(model.model_name or cfg.model.name)
    if video:
        data_update.update(
            {key: recorded[key] for key in ("num_frames", "frame_interval", "sampling") if key in recorded}
        )
    for key in ("num_spatial_crops", "num_temporal_clips") if video else ("num_spatial_crops",):
        if key in recipe and key not in cfg.data.model_fields_set:
            data_update[key] = int(recipe[key])
    update = {"model": model_update, "data": data_update, "eval": eval_update}
    return build_config([cfg.model_dump(mode="json"), update])


def recipe_views(cfg: Config, model: LoadedModel) -> dict[str, float]:
    """What the model's training recipe says of test-time views: ``hflip``, ``num_spatial_crops`` and
    ``num_temporal_clips``, as far as it records them (a checkpoint's config, a registered version's metadata), else
    from its training run's parameters (a version registered before the metadata held them); may be empty."""
    from fovea.sources import RECIPE_VIEW_KEYS

    found = {key: float(model.inputs[key]) for key in RECIPE_VIEW_KEYS if model.inputs.get(key) is not None}
    if len(found) < len(RECIPE_VIEW_KEYS) and model.kind == "registry" and model.source_run_id:
        from fovea.track import resolve_tracking_uri, run_params

        params = run_params(resolve_tracking_uri(cfg.track.uri), model.source_run_id)
        for key in RECIPE_VIEW_KEYS:
            value = params.get(f"data.{key}")
            if key not in found and value not in (None, "", "None"):
                try:
                    found[key] = float(value)
                except ValueError:
                    continue  # not a number: the config's default stands
    return found


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
# The job
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """A finished evaluation: what was scored, on what, the scores, and where they were recorded."""

    model: LoadedModel
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


def _check_model_fits(cfg: Config, model: LoadedModel, manifest: dict[str, Any], dataset_dir: Path) -> list[int] | None:
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
        model = load_model(cfg.eval.model, tracking_uri)
    except (ValueError, OSError, RuntimeError, KeyError, ImportError) as err:
        # state-dict mismatches list every key on its own line: the first line says what is wrong
        raise ConfigError(f"eval.model: {first_line(err)}") from None
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
        result.notes.append(f"not recorded in MLflow ({typed_line(err, limit=200)})")
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
