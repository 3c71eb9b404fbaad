"""The driver side of a training run: start Ray, build the datasets, the ``WorkerPlan`` and the TorchTrainer, fit,
then hand the final checkpoint to ``fovea.train.register``. Pre-flight checks and failure explanations live in
``fovea.train.checks``."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

from fovea.checkpoints import checkpoint_location
from fovea.config import Config, ConfigError
from fovea.console import Stopped, run_watched
from fovea.errors import typed_line
from fovea.jobs import RunFailure, run_command, stop_ray
from fovea.paths import fovea_home
from fovea.train.checks import (
    check_before_start,
    check_optimizer_steps,
    checkpoint_failure,
    data_failure,
    load_checked_teacher,
)
from fovea.train.plan import WorkerPlan
from fovea.train.register import TrainSummary, log_final_model_of, refuse_untrained, store_is_back


def storage_path(cfg: Config) -> str:
    """Where Ray Train keeps this run's checkpoints (must be shared storage on a multi-node cluster)."""
    path = cfg.train.storage_path or str(fovea_home() / "runs")
    return path if "://" in path else str(Path(path).expanduser().resolve())


def init_ray(progress_bars: bool = False) -> None:
    """Start Ray here, or join the cluster under ``ray job submit`` (or with ``RAY_ADDRESS`` set).

    Under a job's console (``fovea.console``) Ray's driver messages are kept to errors, unless verbose, and the
    session folder holding Ray's own logs is printed once.

    Raises:
        RunFailure: Ray did not start, or the cluster could not be reached (one line; the job exits 1).
    """
    import logging

    import ray

    from fovea import console
    from fovea.data.stream import configure_data_context

    job_console = console.active_console()
    quiet = job_console is not None and not job_console.verbose
    if not ray.is_initialized():
        if quiet:
            console.quiet_driver_loggers()
        try:
            context = ray.init(log_to_driver=True, logging_level=logging.ERROR if quiet else logging.INFO)
        except Exception as err:  # "The current node timed out during startup", no cluster at the address...
            raise RunFailure(ray_start_problem(err)) from None
        console.rearm_signals()  # ray.init replaced the SIGTERM handler
        session = (getattr(context, "address_info", None) or {}).get("session_dir")
        if quiet and session:
            print(f"Ray's own logs: {session}/logs (train.verbose=true or FOVEA_VERBOSE=1 prints them)", flush=True)
    configure_data_context(progress_bars)  # Ray Train hands this context to the dataset coordinators


def ray_start_problem(err: BaseException) -> str:
    """The one line for a Ray that would not start or could not be reached."""
    import os

    from fovea.errors import first_line

    address = os.environ.get("RAY_ADDRESS", "")
    where = f"the Ray cluster at {address}" if address else "Ray"
    return f"{where} could not be started or reached: {type(err).__name__}: {first_line(err)[:300]}"


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
    if cfg.data.video_decode == "device":
        raise ConfigError("data.video_decode=device is for video datasets; this one holds images")
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


def start_weights_registry(cfg: Config) -> str | None:
    """The tracking URI a ``models:/...`` (or ``NAME@ALIAS``) ``model.checkpoint`` is read from, made absolute here
    in the driver; None for a file."""
    from fovea.sources import source_kind

    if not cfg.model.checkpoint or source_kind(cfg.model.checkpoint)[0] != "registry":
        return None
    from fovea.track import resolve_tracking_uri

    return resolve_tracking_uri(cfg.track.uri)


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
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fovea.console import active_console, verbose_wanted
    from fovea.train.worker import train_worker

    job_console = active_console()  # none in a library call or a sweep's trial: no step-progress records

    resources = {"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_worker,
        train_loop_config=WorkerPlan(
            config=config_for_workers(cfg),
            classes=tuple(manifest["classes"]),
            train_count=manifest["splits"]["train"]["count"],
            val_count=manifest["splits"]["val"]["count"],
            run_name=run_name,
            tracking_uri=tracking_uri,
            experiment_id=experiment_id,
            run_tags=tags,
            run_id=run_id,
            teacher=teacher_ref,
            teacher_source=teacher_source,
            multi_view="val_views" in datasets,
            stop_at_epoch=stop_at_epoch,
            progress_prefix=progress_prefix,
            registry_uri=start_weights_registry(cfg),
            initial_checkpoint=resume_from,
            step_progress_s=job_console.progress_every_s() if job_console is not None else 0.0,
        ).as_loop_config(),
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
            # Ray Train's banners (worker group started, each report and checkpoint) stay in its log files
            logging_config=LoggingConfig(log_level="INFO" if verbose_wanted(cfg.train.verbose) else "WARNING"),
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


def run_training(cfg: Config, *, checked: bool = False) -> TrainSummary:
    """Train (or resume) the run described by ``cfg`` on Ray, then log and register the final model.

    Rerunning with the same ``train.name`` (and storage path) resumes from the last checkpoint and continues the
    same MLflow run.

    Args:
        checked: ``check_before_start(cfg)`` already passed (a job's command line runs it before Ray).
    """
    if not checked:
        check_before_start(cfg)
    started = time.time()
    teacher = load_checked_teacher(cfg) if cfg.distill.type != "none" else None  # before Ray: fail fast
    init_ray()

    from fovea.data import location_label
    from fovea.data.shards import BadShardsError

    run_name = cfg.run_name()
    dataset_dir = dataset_dir_of(cfg)
    manifest = checked_manifest(cfg, dataset_dir)
    check_optimizer_steps(cfg, manifest["splits"]["train"]["count"])  # the rows left, on the demo set too
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
        result = run_watched(trainer.fit)  # Ctrl-C and SIGTERM reach this thread (Ray Train's handler is not set)
    except (Stopped, KeyboardInterrupt) as stop:
        stop_ray()  # the workers stop before their run is ended: nothing of theirs comes after
        stop.detail = stopped_detail(cfg, run_name, tracking_uri, experiment_id, stop)  # type: ignore[union-attr]
        raise
    except Exception as err:  # Ray Train's TrainingFailedError; a full disk, a corrupt checkpoint or shard: one line
        problem = checkpoint_failure(err) or data_failure(err, cfg.data.max_bad_shards)
        end_run(cfg, run_name, tracking_uri, experiment_id, "FAILED", problem or failure_reason(err))
        if problem is None:
            raise
        raise RunFailure(f"run {run_name} stopped: {problem}") from None
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name} finished without a checkpoint")
    state = read_state(result.checkpoint)
    history = json.loads(state["history"])
    run_id = state.get("mlflow_run_id")
    refuse_untrained(cfg, state, history, what=f"run {run_name}", tracking_uri=tracking_uri, run_id=run_id)
    last = history[-1]
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


def end_run(
    cfg: Config, run_name: str, tracking_uri: str | None, experiment_id: str | None, status: str, reason: str
) -> tuple[str, int] | None:
    """End the MLflow run of ``run_name`` as ``status`` with its one-line ``reason`` (``fovea.stop_reason``), as
    far as the store answers: ``(run_id, last epoch logged)``, None without one."""
    if not (cfg.track.enabled and tracking_uri and experiment_id):
        return None
    from fovea.track.store import end_training_run

    try:
        return end_training_run(tracking_uri, experiment_id, run_name, status, reason)
    except Exception as err:  # the store is down: the run stays as it was; say so, do not hide the stop
        print(f"warning: could not end the MLflow run of {run_name} as {status}: {typed_line(err, limit=200)}")
        return None


def failure_reason(err: BaseException) -> str:
    """The one line a failed run is tagged with: a worker's own error (the last line of its traceback, as Ray Train
    hands it in ``worker_failures``), else the error's first line."""
    failures = getattr(err, "worker_failures", None) or {}
    if failures:
        rank, failure = min(failures.items(), key=lambda item: item[0])
        lines = [line.strip() for line in str(failure).splitlines() if line.strip()]
        return f"worker {rank}: {lines[-1] if lines else type(failure).__name__}"[:1000]
    cause = getattr(err, "controller_failure", None)
    return typed_line(cause if isinstance(cause, BaseException) else err, limit=1000)


def stopped_detail(
    cfg: Config, run_name: str, tracking_uri: str | None, experiment_id: str | None, stop: BaseException
) -> str:
    """End the run's MLflow run as KILLED; the one line saying where the run stands and how to resume it."""
    signum = getattr(stop, "signum", signal.SIGINT)
    ended = end_run(cfg, run_name, tracking_uri, experiment_id, "KILLED", f"stopped by {signal.Signals(signum).name}")
    rerun = "rerun the same command" if cfg.train.name else f"rerun with train.name={run_name}"
    line = f"run {run_name} stopped"
    if ended is not None:
        line += f"; MLflow run {ended[0]} ended KILLED after epoch {ended[1]}"
    run_dir = f"{storage_path(cfg)}/{run_name}"
    committed = committed_epoch(run_dir)
    if committed == 0:  # stopped before Ray Train recorded a checkpoint: nothing to resume from
        return line + f"; no checkpoint was committed yet ({run_dir}): a rerun starts from epoch 1"
    at = f" (epoch {committed})" if committed else ""
    return line + f"; its last checkpoint{at} is kept in {run_dir}: {rerun} to resume"


def committed_epoch(run_dir: str) -> int | None:
    """The epoch of the checkpoint Ray Train would resume ``run_dir`` from (its checkpoint manager's snapshot): 0
    when none was committed, None when that cannot be read here (a URI, or a snapshot of another shape)."""
    if "://" in run_dir:
        return None
    snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"
    if not snapshot.is_file():
        return 0
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        return int(((latest or {}).get("metrics") or {}).get("epoch", 0)) if latest is not None else 0
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def job_main(job: str, configs_dir: str | Path, description: str = "", argv: list[str] | None = None) -> int:
    """A training job's whole command line: parse and check the config (before Ray), train, print the summary.

    Returns:
        The exit code: 0 on success, 2 for a configuration problem (reported in one line).
    """

    def banner(cfg: Config) -> str:
        scaling = cfg.scaling
        workers = f"{scaling.min_workers}-{scaling.max_workers} (elastic)" if scaling.elastic else scaling.num_workers
        return f"fovea {job}: model {cfg.model.name}, {cfg.train.epochs} epochs, {workers} worker(s)"

    def run(cfg: Config) -> TrainSummary:
        return run_training(cfg, checked=True)

    return run_command(job, configs_dir, description, argv, check=check_before_start, run=run, banner=banner)
