"""The driver side of a training run: validate, start Ray, build datasets and the TorchTrainer, register the model."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fovea.checkpoints import checkpoint_location
from fovea.config import Config, ConfigError
from fovea.jobs import RunFailure, run_command
from fovea.paths import fovea_home
from fovea.recipe import model_create_args


def checkpoint_failure(err: BaseException) -> str | None:
    """The one-line problem behind a failed ``trainer.fit()`` when it is one fovea explains (a checkpoint, or
    non-finite training; Ray Train's ``WorkerGroupError`` carries each worker's exception, wrapped with its
    traceback), or None."""
    from fovea.checkpoints import CheckpointError, CheckpointWriteError
    from fovea.train.loop import NonFiniteTraining

    for rank, failure in sorted((getattr(err, "worker_failures", None) or {}).items()):
        original = getattr(failure, "_base_exc", failure)  # Ray's UserExceptionWithTraceback wraps it
        if isinstance(original, CheckpointError | CheckpointWriteError | NonFiniteTraining):
            return f"worker {rank}: {original}"
    return None


def data_failure(err: BaseException, max_bad_shards: int) -> str | None:
    """The one-line shard problem behind a failed ``trainer.fit()``: a shard file that failed to read with the split's
    ``data.max_bad_shards`` used up (Ray Data failed the pass, the worker reading it failed), or None."""
    from fovea.data.shards import shard_read_problem

    for rank, failure in sorted((getattr(err, "worker_failures", None) or {}).items()):
        problem = shard_read_problem(failure)
        if problem:
            return f"worker {rank}: {problem}; more shard files failed than data.max_bad_shards={max_bad_shards} allows"
    return None


@dataclass
class TrainSummary:
    """What a finished run produced."""

    run_name: str
    epochs: int
    val_top1: float
    val_top5: float
    wall_time_s: float
    multi_view: dict[str, float] | None
    checkpoint_path: str
    mlflow_run_id: str | None
    tracking_uri: str | None
    registered_model: str | None
    registered_version: str | None
    dataset: str
    promotion: str = ""
    model_logging_s: float = 0.0

    def describe(self) -> str:
        lines = [
            f"run            {self.run_name}",
            f"val top-1      {self.val_top1:.2f}%  (top-5 {self.val_top5:.2f}%) after {self.epochs} epochs",
        ]
        if self.multi_view:
            views = self.multi_view
            lines.append(
                f"multi-view     top-1 {views['val_mv_top1']:.2f}%  (top-5 {views['val_mv_top5']:.2f}%) "
                f"over {int(views['val_views'])} views per video"
            )
        lines += [
            f"wall time      {self.wall_time_s:.1f} s",
            f"checkpoint     {self.checkpoint_path}",
            f"dataset        {self.dataset}",
        ]
        lines += tracking_lines(self.mlflow_run_id, self.tracking_uri, self.registered_model, self.registered_version)
        if self.registered_version and self.model_logging_s:
            lines[-1] += f"  (logged and registered in {self.model_logging_s:.1f} s)"
        if self.promotion:
            lines.append(f"promotion      {self.promotion}")
        return "\n".join(lines)


def tracking_lines(run_id: str | None, uri: str | None, model: str | None, version: str | None) -> list[str]:
    """The summary's MLflow lines: the run, and the registered version when there is one."""
    lines = [f"mlflow run     {run_id}  ({uri})"] if run_id else []
    if version:
        lines.append(f"registered     {model} version {version}")
    return lines


def storage_path(cfg: Config) -> str:
    """Where Ray Train keeps this run's checkpoints (must be shared storage on a multi-node cluster)."""
    path = cfg.train.storage_path or str(fovea_home() / "runs")
    return path if "://" in path else str(Path(path).expanduser().resolve())


def check_before_start(cfg: Config) -> None:
    """Checks that need no Ray: the model exists, the dataset folder is prepared, a resume is consistent.

    Raises:
        ConfigError: one line naming the field.
    """
    from fovea.data import load_manifest
    from fovea.models import check_model_name, is_video_model

    try:
        check_model_name(cfg.model.name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    video = is_video_model(cfg.model.name)
    if cfg.data.path:
        try:
            kind = load_manifest(cfg.data.path).get("kind", "image")
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"data.path: {err}") from None
        if (kind == "video") != video:
            takes = "video clips" if video else "images"
            raise ConfigError(f"data.path: {cfg.data.path} is a {kind} dataset, but {cfg.model.name} takes {takes}")
    elif video and cfg.data.hflip > 0:
        raise ConfigError(
            "data.hflip: the demo videos' classes include move_left and move_right, mirror images of each other; "
            "set data.hflip=0"
        )
    if video and cfg.distill.type != "none":
        raise ConfigError("distill.type: distillation is implemented for image models only")
    if cfg.model.checkpoint and not Path(cfg.model.checkpoint).is_file():
        raise ConfigError(f"model.checkpoint: no such file: {cfg.model.checkpoint}")
    if cfg.model.pretrained and cfg.model.checkpoint:
        raise ConfigError("model.pretrained and model.checkpoint: give one, not both")
    if cfg.distill.type != "none":
        check_teacher_spec(cfg)


def check_teacher_spec(cfg: Config) -> None:
    from fovea.distill import teacher_kind
    from fovea.models import check_model_name
    from fovea.refs import parse_registry_uri

    spec = cfg.distill.teacher
    kind = teacher_kind(spec)
    if kind == "registry":
        try:
            parse_registry_uri(spec)
        except ValueError as err:
            raise ConfigError(f"distill.teacher: {err}") from None
    elif kind == "file":
        path = Path(spec).expanduser()
        if not (path.is_file() or (path / "checkpoint.pt").is_file()):
            raise ConfigError(f"distill.teacher: no such checkpoint file: {spec}")
    else:
        try:
            check_model_name(spec)
        except ValueError as err:
            raise ConfigError(f"distill.teacher: {err}".replace("model.name: ", "")) from None
        if not cfg.distill.teacher_checkpoint and not cfg.distill.teacher_pretrained:
            raise ConfigError(
                f"distill.teacher={spec} needs weights: set distill.teacher_checkpoint=FILE "
                "(or distill.teacher_pretrained=true for timm's published weights)"
            )
    if kind != "name" and (cfg.distill.teacher_checkpoint or cfg.distill.teacher_pretrained):
        raise ConfigError("distill.teacher_checkpoint/teacher_pretrained go with a teacher given by model name")
    if cfg.distill.teacher_checkpoint and not Path(cfg.distill.teacher_checkpoint).expanduser().is_file():
        raise ConfigError(f"distill.teacher_checkpoint: no such file: {cfg.distill.teacher_checkpoint}")
    if cfg.distill.heads == "token":
        from fovea.distill import has_distillation_token
        from fovea.models import create_model

        student = create_model(cfg.model.name, num_classes=2, img_size=cfg.model.img_size, **cfg.model.kwargs)
        if not has_distillation_token(student):
            raise ConfigError(f"distill.heads=token: {cfg.model.name} has no distillation token")


def load_checked_teacher(cfg: Config) -> Any:
    """Load the teacher on the driver (the caller checks its classes against the dataset's with ``check_teacher``).

    Loading here, not on the workers, means a teacher file or registry only the driver can reach still works on
    a cluster: the workers get the module through Ray's object store.

    Raises:
        ConfigError: ``distill.teacher: ...`` in one line.
    """
    from fovea.distill import load_teacher
    from fovea.track import resolve_tracking_uri

    try:
        return load_teacher(
            cfg.distill.teacher,
            num_classes=0,
            img_size=cfg.model.img_size,
            checkpoint=cfg.distill.teacher_checkpoint,
            pretrained=cfg.distill.teacher_pretrained,
            tracking_uri=resolve_tracking_uri(cfg.track.uri),
        )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise ConfigError(f"distill.teacher: {err}") from None


def init_ray(progress_bars: bool = False) -> None:
    import ray

    from fovea.data.stream import configure_data_context

    if not ray.is_initialized():
        # Under `ray job submit` (or with RAY_ADDRESS set) this joins the cluster; otherwise it starts Ray here.
        ray.init(log_to_driver=True)
    configure_data_context(progress_bars)  # Ray Train hands this context to the dataset coordinators


def dataset_dir_of(cfg: Config) -> Path | str:
    """The prepared dataset: ``data.path`` (a URI stays one), else the demo set, made on first use."""
    from fovea.data import dataset_location, ensure_demo_images, ensure_demo_videos
    from fovea.models import is_video_model

    if cfg.data.path:
        return dataset_location(cfg.data.path)
    if is_video_model(cfg.model.name):
        return ensure_demo_videos(
            size=cfg.data.demo_video_size,
            num_frames=cfg.data.demo_video_frames,
            train_per_class=cfg.data.demo_video_train_per_class,
            val_per_class=cfg.data.demo_video_val_per_class,
            seed=0,
        )
    return ensure_demo_images(
        size=cfg.data.demo_size,
        train_per_class=cfg.data.demo_train_per_class,
        val_per_class=cfg.data.demo_val_per_class,
        seed=0,
    )


def checked_manifest(cfg: Config, dataset_dir: Path | str) -> dict[str, Any]:
    """The dataset's manifest less its missing or unreadable shard files (``data.max_bad_shards`` of them per split
    at most), each split that lost some announced in one warning line.

    Raises:
        RunFailure: a split lost more shards than allowed (one line naming them).
    """
    from fovea.data import load_manifest, location_label
    from fovea.data.shards import BadShardsError, check_shards, skipped_warnings

    try:
        manifest = check_shards(load_manifest(dataset_dir), max_bad_shards=cfg.data.max_bad_shards)
    except BadShardsError as err:
        raise RunFailure(f"dataset {location_label(dataset_dir)}: {err}") from None
    for line in skipped_warnings(manifest, cfg.data.max_bad_shards):
        print(line, flush=True)
    return manifest


def skipped_data_tags(manifest: dict[str, Any]) -> dict[str, str]:
    """The run's record of the shard files the check before it dropped: counts, and which (``split: path``)."""
    from fovea.data.shards import skipped_summary

    shards, rows = skipped_summary(manifest)
    tags = {"fovea.data_skipped_shards": str(shards), "fovea.data_skipped_rows": str(rows)}
    if shards:
        named = [
            f"{split}: {item['path']} ({item['reason']})"
            for split, info in manifest["splits"].items()
            for item in info.get("skipped_shards", ())
        ]
        tags["fovea.data_skipped"] = "; ".join(named)[:5000]
    return tags


def build_datasets(cfg: Config, manifest: dict[str, Any]) -> dict[str, Any]:
    """The run's Ray Datasets (``train``, ``val`` and, for video, ``val_views``) from a prepared manifest."""
    from fovea.data import build_image_datasets, build_video_datasets

    if manifest.get("kind") == "video":
        if cfg.data.jpeg_decode == "device":
            raise ConfigError("data.jpeg_decode=device is for image datasets; this one holds videos")
        return build_video_datasets(
            manifest, cfg.data, img_size=cfg.model.img_size, num_frames=cfg.data.num_frames, seed=cfg.train.seed
        )
    return build_image_datasets(manifest, cfg.data, img_size=cfg.model.img_size, seed=cfg.train.seed)


def run_tags(cfg: Config, dataset_dir: Path | str) -> dict[str, str]:
    """Tags every fovea run carries in MLflow: what trained it, on which data, from which source and recipe."""
    from fovea.data import location_label, manifest_hash
    from fovea.provenance import git_commit

    return {
        "fovea.job": cfg.job,
        "fovea.role": "train",
        "fovea.model": cfg.model.name,
        "fovea.dataset": location_label(dataset_dir),
        "fovea.manifest_hash": manifest_hash(dataset_dir),
        "fovea.recipe_hash": cfg.recipe_hash(),
        "fovea.git_commit": git_commit(),
        "fovea.host": socket.gethostname(),
    }


def build_torch_trainer(
    cfg: Config,
    *,
    run_name: str,
    manifest: dict[str, Any],
    datasets: dict[str, Any],
    tracking_uri: str | None,
    experiment_id: str | None,
    tags: dict[str, str],
    storage: str,
    teacher_ref: Any = None,
    teacher_source: str | None = None,
    run_id: str | None = None,
    stop_at_epoch: int | None = None,
    resume_from: Any = None,
    callbacks: list[Any] | None = None,
    progress_prefix: str = "",
) -> Any:
    """The ``TorchTrainer`` of one run (a training job's, or one Tune trial's).

    Args:
        run_id: an MLflow run the workers log into (a sweep's trial run), instead of the one in the checkpoint.
        stop_at_epoch: the workers return after this epoch (PBT trains a trial a few epochs at a time).
        resume_from: a checkpoint folder to start from when this run has none of its own (a PBT trial's weights,
            maybe copied from another trial). Ray Train V2 dropped ``resume_from_checkpoint``: the worker loads it.
        callbacks: Ray Train callbacks (a sweep's report to Tune).
        progress_prefix: put before every progress line (which trial it is).
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fovea.train.worker import train_worker

    resources = {"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config_for_workers(cfg),
            "classes": manifest["classes"],
            "train_count": manifest["splits"]["train"]["count"],
            "val_count": manifest["splits"]["val"]["count"],
            "tracking_uri": tracking_uri,
            "experiment_id": experiment_id,
            "run_name": run_name,
            "run_tags": tags,
            "run_id": run_id,
            "teacher": teacher_ref,
            "teacher_source": teacher_source,
            "multi_view": "val_views" in datasets,
            "stop_at_epoch": stop_at_epoch,
            "progress_prefix": progress_prefix,
            "initial_checkpoint": resume_from,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,  # (min, max): elastic
            elastic_resize_monitor_interval_s=cfg.scaling.elastic_resize_interval_s,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=callbacks or None,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all"),
    )


def config_for_workers(cfg: Config) -> Any:
    """The config as the workers receive it: a dict, or, when it holds secrets, a reference to that dict in Ray's
    object store. Ray Train records a run's ``train_loop_config`` in its run state (the dashboard's Train page, when
    ``RAY_TRAIN_ENABLE_STATE_TRACKING=1``), where a reference shows as its id."""
    config = cfg.model_dump(mode="json")
    if config == cfg.redacted():
        return config
    import ray

    return ray.put(config)


def read_state(checkpoint: Any) -> dict[str, Any]:
    """The training state saved in a ``ray.train.Checkpoint`` (or a checkpoint folder's path), verified against its
    checksum (``fovea.checkpoints.CheckpointError`` when it does not verify)."""
    from fovea.checkpoints import load_checkpoint

    if isinstance(checkpoint, str | Path):
        return load_checkpoint(checkpoint)
    with checkpoint.as_directory() as directory:
        return load_checkpoint(directory)


def prepare_teacher(cfg: Config, teacher: Any, classes: list[str]) -> tuple[Any, str | None]:
    """Check a loaded teacher against the dataset and put it in Ray's object store: ``(ref, source)``."""
    if teacher is None:
        return None, None
    import ray

    from fovea.distill import check_teacher

    try:
        check_teacher(teacher, classes=classes, img_size=cfg.model.img_size)
    except ValueError as err:
        raise ConfigError(f"distill.teacher: {err}") from None
    print(f"teacher {teacher.source}: {type(teacher.model).__name__}, classes match the dataset", flush=True)
    return ray.put(teacher), teacher.source


def run_training(cfg: Config) -> TrainSummary:
    """Train (or resume) the run described by ``cfg`` on Ray, then log and register the final model.

    Rerunning with the same ``train.name`` (and storage path) resumes from the last checkpoint and continues the
    same MLflow run.
    """
    check_before_start(cfg)
    started = time.time()
    teacher = load_checked_teacher(cfg) if cfg.distill.type != "none" else None  # before Ray: fail fast
    init_ray()

    from fovea.data import location_label
    from fovea.data.shards import BadShardsError

    run_name = cfg.run_name()
    dataset_dir = dataset_dir_of(cfg)
    manifest = checked_manifest(cfg, dataset_dir)
    classes = manifest["classes"]
    try:
        datasets = build_datasets(cfg, manifest)
    except BadShardsError as err:  # a cached split, read here, lost more shards than allowed
        raise RunFailure(f"dataset {location_label(dataset_dir)}: {err}") from None

    tracking_uri = experiment_id = None
    tags = {**run_tags(cfg, dataset_dir), **skipped_data_tags(manifest)}
    if cfg.track.enabled:
        from fovea.track import TRAIN_NAME_TAG, ensure_experiment, resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(cfg.track.uri)
        experiment_id = ensure_experiment(tracking_uri, cfg.track.experiment)
        tags[TRAIN_NAME_TAG] = run_name
    teacher_ref, teacher_source = prepare_teacher(cfg, teacher, classes)
    if teacher_source:
        tags["fovea.teacher"] = teacher_source

    trainer = build_torch_trainer(
        cfg,
        run_name=run_name,
        manifest=manifest,
        datasets=datasets,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        tags=tags,
        storage=storage_path(cfg),
        teacher_ref=teacher_ref,
        teacher_source=teacher_source,
    )
    try:
        result = trainer.fit()
    except Exception as err:  # Ray Train's TrainingFailedError; a full disk, a corrupt checkpoint or shard: one line
        problem = checkpoint_failure(err) or data_failure(err, cfg.data.max_bad_shards)
        if problem is None:
            raise
        raise RunFailure(f"run {run_name} stopped: {problem}") from None
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name} finished without a checkpoint")
    state = read_state(result.checkpoint)
    history = json.loads(state["history"])
    last = history[-1]
    run_id = state.get("mlflow_run_id")
    registered_name = version = None
    promotion = ""
    logging_started = time.time()
    if cfg.track.enabled and run_id and store_is_back(tracking_uri, run_id, cfg.track.flush_timeout_s):
        registered_name, version, promotion = log_final_model_of(
            cfg, state, tracking_uri, run_id, classes, dataset_dir, last
        )
    elif cfg.track.enabled and run_id:
        promotion = "the final model was not logged: the tracking store did not come back (checkpoint kept above)"
    return TrainSummary(
        run_name=run_name,
        epochs=int(last["epoch"]),
        val_top1=float(last["val_top1"]),
        val_top5=float(last["val_top5"]),
        wall_time_s=time.time() - started,
        multi_view={key: last[key] for key in ("val_mv_top1", "val_mv_top5", "val_views")}
        if "val_mv_top1" in last
        else None,
        checkpoint_path=checkpoint_location(result.checkpoint),
        mlflow_run_id=run_id,
        tracking_uri=tracking_uri,
        registered_model=registered_name,
        registered_version=version,
        dataset=location_label(dataset_dir),
        promotion=promotion,
        model_logging_s=time.time() - logging_started if version else 0.0,
    )


def store_is_back(tracking_uri: str, run_id: str, timeout: float) -> bool:
    """Before the driver logs the final model: wait for the tracking store (up to ``timeout`` s), send what the
    worker could not (its fallback file on this machine) and draw the run's curves. False when the store stayed
    unreachable."""
    from fovea.track import fallback_file, log_curves_from_run, replay_fallback, wait_for_store

    if not wait_for_store(tracking_uri, timeout):
        print(f"warning: the MLflow tracking store at {tracking_uri} is unreachable", flush=True)
        return False
    pending = fallback_file(run_id)
    if pending.is_file():
        sent = replay_fallback(pending, tracking_uri)
        print(f"sent {sent['metrics']} held metrics and {sent['artifacts']} artifacts from {pending}", flush=True)
    log_curves_from_run(tracking_uri, run_id)
    return True


def log_final_model_of(
    cfg: Config,
    state: dict[str, Any],
    tracking_uri: str,
    run_id: str,
    classes: list[str],
    dataset_dir: Path,
    last: dict[str, float],
    *,
    promote: bool = True,
    extra_tags: dict[str, str] | None = None,
) -> tuple[str | None, str | None, str]:
    """Rebuild the trained model on CPU from the final checkpoint, log it to the run and register a version.

    The version is tagged with what it is and where it came from (architecture, dataset and manifest hash, val
    top-1/top-5, parameters, GMACs, git commit, recipe hash), takes ``track.challenger_alias``, and takes
    ``track.champion_alias`` when ``track.promote``'s rule says so.

    Args:
        promote: apply the promotion rule (a sweep applies its own, on ``tune.metric``).
        extra_tags: more version tags (a sweep's name and trial).

    Returns:
        ``(registered name, version, promotion line)``; name and version are None when nothing was registered.
    """
    import numpy as np

    from fovea.data import location_label, manifest_hash
    from fovea.models import count_macs, count_parameters, create_model, is_video_model
    from fovea.provenance import git_commit
    from fovea.track import finish_run, log_final_model, promote_new_version
    from fovea.train.loop import normalization

    video = is_video_model(cfg.model.name)
    create_kwargs = model_create_args(cfg, num_classes=len(classes))
    model = create_model(cfg.model.name, **create_kwargs)
    model.load_state_dict(state["model"])
    model.eval()
    mean, std = normalization(model, cfg.data)
    registered_name = cfg.registered_model_name if cfg.track.log_model else None
    version, promotion = None, ""
    if cfg.track.log_model:
        size = cfg.model.img_size
        frames = (cfg.data.num_frames,) if video else ()
        example = np.zeros((1, 3, *frames, size, size), dtype=np.float32)
        shape = (
            f"(N, 3, {cfg.data.num_frames}, {size}, {size}) normalised clips"
            if video
            else (f"(N, 3, {size}, {size}) normalised images")
        )
        macs = count_macs(cfg.model.name, example.shape, **create_kwargs)
        data_hash = manifest_hash(dataset_dir)
        commit = git_commit()
        version = log_final_model(
            tracking_uri,
            run_id,
            model,
            input_example=example,
            registered_model_name=registered_name,
            version_tags={
                "architecture": type(model).__name__,
                "model_name": cfg.model.name,
                "dataset": location_label(dataset_dir),
                "manifest_hash": data_hash,
                "val_top1": f"{last['val_top1']:.2f}",
                "val_top5": f"{last['val_top5']:.2f}",
                **{key: f"{last[key]:.2f}" for key in ("val_mv_top1", "val_mv_top5") if key in last},
                "epochs": str(int(last["epoch"])),
                "params": str(count_parameters(model)),
                "gmacs": f"{macs / 1e9:.4g}" if macs is not None else "unknown",
                "img_size": str(cfg.model.img_size),
                **({"num_frames": str(cfg.data.num_frames)} if video else {}),
                "num_classes": str(len(classes)),
                "git_commit": commit,
                "recipe_hash": cfg.recipe_hash(),
                "job": cfg.job,
                **(extra_tags or {}),
            },
            description=(
                f"{cfg.model.name} ({type(model).__name__}, {count_parameters(model) / 1e6:.2f}M parameters"
                + (f", {macs / 1e9:.3g} GMACs per view" if macs is not None else "")
                + f") trained by fovea job {cfg.job} for {int(last['epoch'])} epochs on {dataset_dir} "
                f"(manifest {data_hash}); val top-1 {last['val_top1']:.2f}%, top-5 {last['val_top5']:.2f}%. "
                f"Input: float32 {shape}, normalised with mean {tuple(round(m, 4) for m in mean)} and std "
                f"{tuple(round(v, 4) for v in std)}; output: logits over the classes in model_info/classes.json. "
                f"Source: git {commit}."
            ),
            classes=classes,
            metadata={
                "model_name": cfg.model.name,
                "create_kwargs": create_kwargs,
                "img_size": cfg.model.img_size,
                "mean": list(mean),
                "std": list(std),
                **(
                    {
                        "num_frames": cfg.data.num_frames,
                        "frame_interval": cfg.data.frame_interval,
                        "sampling": cfg.data.sampling,
                    }
                    if video
                    else {}
                ),
            },
        )
        if version is not None and promote:
            metric = cfg.track.promote_metric
            if metric not in last:
                promotion = f"champion left as it is: this run has no {metric} (track.promote_metric)"
            else:
                _, promotion = promote_new_version(
                    tracking_uri,
                    registered_name,
                    version,
                    score=float(last[metric]),
                    metric=metric,
                    policy=cfg.track.promote,
                    champion_alias=cfg.track.champion_alias,
                    challenger_alias=cfg.track.challenger_alias,
                    min_delta=cfg.track.promote_min_delta,
                    dataset=location_label(dataset_dir),
                    manifest_hash=data_hash,
                )
    finish_run(tracking_uri, run_id)
    return registered_name, version, promotion


def job_main(job: str, configs_dir: str | Path, description: str = "", argv: list[str] | None = None) -> int:
    """A training job's whole command line: parse and check the config (before Ray), train, print the summary.

    Returns:
        The exit code: 0 on success, 2 for a configuration problem (reported in one line).
    """

    def banner(cfg: Config) -> str:
        scaling = cfg.scaling
        workers = f"{scaling.min_workers}-{scaling.max_workers} (elastic)" if scaling.elastic else scaling.num_workers
        return f"fovea {job}: model {cfg.model.name}, {cfg.train.epochs} epochs, {workers} worker(s)"

    return run_command(job, configs_dir, description, argv, check=check_before_start, run=run_training, banner=banner)
