"""The sweep driver: a Ray Tune ``Tuner`` whose trials each build and run a Ray Train ``TorchTrainer``.

Ray Train V2 pattern: the Tune trial is a small driver function (no CPUs of its own) that builds the trial's
config from the sampled values, opens the trial's nested MLflow run, and runs a ``TorchTrainer`` whose per-epoch
reports reach Tune through ``TuneReportCallback``. ASHA stops weak trials on those reports. PBT trains each trial a
few epochs at a time and hands Tune the checkpoint after each stretch, so Tune can copy the best trials' weights into
the worst (exploit) and perturb their values (explore). Rerunning a sweep's command with the same ``tune.name``
restores the Tuner: finished trials are kept, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fovea.config import Config, ConfigError, build_config
from fovea.tune.report import (
    format_table,
    format_value,
    map_axes,
    map_file_name,
    plot_map,
    plot_objective,
    short_name,
    write_csv,
)
from fovea.tune.space import Dimension, apply_values, grid_size, parse_space, to_param_space

STATE_FILE = "fovea_sweep.json"
TRIAL_DRIVER_MEMORY = 64 * 1024**2
DATA_PATHS = ("data.", "model.img_size", "train.seed")  # searched paths that change what the datasets yield


@dataclass
class SweepContext:
    """What every trial needs, resolved once by the driver (sent to the trials through Ray's object store)."""

    base: dict[str, Any]
    paths: list[str]
    manifest: dict[str, Any]
    dataset_dir: str
    sweep_name: str
    train_storage: str
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    teacher_ref: Any = None
    teacher_source: str | None = None
    datasets: dict[str, Any] | None = None  # built once when no searched path changes them


@dataclass
class SweepSummary:
    """What a finished sweep found."""

    name: str
    metric: str
    rows: list[dict[str, Any]]
    paths: list[str]
    best: dict[str, Any] | None
    wall_time_s: float
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    promotion: str = ""
    artifacts: list[str] = field(default_factory=list)
    interrupted: bool = False
    not_started: int = 0

    def describe(self) -> str:
        counts = {o: sum(r["outcome"] == o for r in self.rows) for o in {r["outcome"] for r in self.rows}}
        lines = [
            f"sweep          {self.name}: {len(self.rows)} trials ("
            + ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in sorted(counts.items()))
            + f") in {self.wall_time_s:.1f} s",
            "",
            format_table(self.rows, self.paths, self.metric),
            "",
        ]
        for row in self.rows:
            if row["outcome"] in ("skipped", "errored") and row.get("reason"):
                lines.append(f"{row['trial_id']} {row['outcome']}: {row['reason']}")
        if self.interrupted:
            unfinished = sum(r["outcome"] == "unfinished" for r in self.rows)
            lines.append(
                f"interrupted    {unfinished} trials unfinished, {self.not_started} not started; rerun the same "
                f"command (or tune.name={self.name}) to resume: finished trials are kept"
            )
        elif self.best is None:
            lines.append("best           none: no trial reported " + self.metric)
        else:
            values = ", ".join(f"{p}={format_value(self.best['params'][p])}" for p in self.paths)
            score = f"{self.metric} {self.best['last']:.2f}"
            lines.append(f"best           trial {self.best['trial_id']}: {score} ({values})")
            lines.append("best config    " + " ".join(f"{p}={_cli_value(self.best['params'][p])}" for p in self.paths))
        from fovea.train.trainer import tracking_lines

        lines += tracking_lines(self.parent_run_id, self.tracking_uri, self.registered_model, self.registered_version)
        if self.promotion:
            lines.append(f"champion       {self.promotion}")
        return "\n".join(lines)


def _cli_value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def trial_config(base: dict[str, Any], values: dict[str, Any]) -> tuple[Config | None, str]:
    """The trial's config, or why the trial cannot run (a value the schema or the architecture rejects).

    The model is built on the ``meta`` device (shapes only, no memory) so architecture constraints, such as a Swin
    window that does not tile every stage's feature map, are found before any Ray Train worker starts.
    """
    import torch

    from fovea.models import create_model, is_video_model, window_fit_problem

    try:
        cfg = build_config([apply_values(base, values)])
    except ConfigError as err:
        return None, f"config: {err}"
    extra = {"num_frames": cfg.data.num_frames} if is_video_model(cfg.model.name) else {}
    try:
        with torch.device("meta"):
            model = create_model(
                cfg.model.name,
                num_classes=2,
                img_size=cfg.model.img_size,
                window_size=cfg.model.window_size,
                **extra,
                **cfg.model.kwargs,
            )
    except Exception as err:  # whatever the constructor rejects: the trial is skipped with the reason, not crashed
        detail = str(err).splitlines()[0] if str(err) else ""
        return None, f"{cfg.model.name} cannot be built: {type(err).__name__}" + (f": {detail}" if detail else "")
    problem = window_fit_problem(model)
    if problem:
        return None, f"model.window_size={cfg.model.window_size or 'preset'}: {problem}"
    return cfg, ""


def _trial_label(trial_id: str, values: dict[str, Any]) -> str:
    return f"{trial_id} " + " ".join(f"{short_name(p)}={_cli_value(v)}" for p, v in values.items())


def run_trial(sampled: dict[str, Any], context: SweepContext) -> None:
    """One Tune trial: build the config, open its MLflow run, run its ``TorchTrainer`` (Tune's function trainable)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from fovea.data.stream import configure_data_context
    from fovea.train.trainer import build_datasets, build_torch_trainer, run_tags, skipped_data_tags

    configure_data_context()  # this actor is the Train run's driver: Ray Train ships its DataContext to the workers
    trial = tune.get_context()
    trial_id = trial.get_trial_id()
    values = {path: sampled[path] for path in context.paths}
    label = _trial_label(trial_id, values)
    cfg, reason = trial_config(context.base, values)
    run_id = None
    if context.tracking_uri and context.parent_run_id:
        from fovea.track import end_trial_run, trial_run

        tags = {**run_tags(cfg, Path(context.dataset_dir)), "fovea.job": context.base["job"]} if cfg else {}
        params = {**(cfg.flat() if cfg else {}), **{f"tune.{p}": v for p, v in values.items()}}
        run_id = trial_run(
            context.tracking_uri,
            context.experiment_id,
            parent_run_id=context.parent_run_id,
            sweep_name=context.sweep_name,
            trial_id=trial_id,
            run_name=label,
            params=params,
            tags={**tags, **({"fovea.teacher": context.teacher_source} if context.teacher_source else {})},
        )
        if cfg is None:
            end_trial_run(context.tracking_uri, run_id, outcome="skipped", reason=reason)
    if cfg is None:
        print(f"[{trial_id}] skipped: {reason}", flush=True)
        return  # no report: Tune ends the trial as terminated, schedulers and searchers treat it as pruned

    datasets = context.datasets or build_datasets(cfg, context.manifest)
    common = dict(
        manifest=context.manifest,
        datasets=datasets,
        tracking_uri=context.tracking_uri,
        experiment_id=context.experiment_id,
        tags={**run_tags(cfg, Path(context.dataset_dir)), **skipped_data_tags(context.manifest)},
        storage=context.train_storage,
        teacher_ref=context.teacher_ref if cfg.distill.type != "none" else None,
        teacher_source=context.teacher_source if cfg.distill.type != "none" else None,
        run_id=run_id,
        progress_prefix=f"[{trial_id}] ",
    )
    print(f"[{trial_id}] starts: {label.partition(' ')[2]}", flush=True)
    if cfg.tune.scheduler == "pbt":
        epochs = _run_pbt_stretches(cfg, trial_id, common)
    else:
        result = build_torch_trainer(cfg, run_name=trial_id, callbacks=[TuneReportCallback()], **common).fit()
        epochs = int(result.metrics.get("epoch", cfg.train.epochs)) if result.metrics else cfg.train.epochs
    if run_id:
        from fovea.track import end_trial_run

        end_trial_run(context.tracking_uri, run_id, outcome="completed", epochs=epochs)


def _run_pbt_stretches(cfg: Config, trial_id: str, common: dict[str, Any]) -> int:
    """Train ``perturbation_interval`` epochs at a time, handing Tune each stretch's last metrics and checkpoint.

    Each stretch is its own Ray Train run named after the trial and the epoch it starts from, so a stretch cut off
    by an interruption resumes where it stopped, while a trial that PBT restarted from another trial's weights starts
    a fresh stretch from them.
    """
    from ray import tune

    from fovea.train.trainer import build_torch_trainer, read_state

    given = tune.get_checkpoint()
    start = None
    if given is not None:  # the trial's own last stretch, or (after an exploit) a better trial's
        with given.as_directory() as folder:
            state = read_state(folder)
        epoch, start = int(state["epoch"]), given.path
        donor = state.get("mlflow_run_id")
        if donor and common.get("run_id") and donor != common["run_id"]:
            print(f"[{trial_id}] PBT exploit: continues from another trial's weights (MLflow run {donor}) at epoch "
                  f"{epoch} with optim.lr={cfg.optim.lr:.3g}", flush=True)  # fmt: skip
    else:
        epoch = 0
    while epoch < cfg.train.epochs:
        stop = min(cfg.train.epochs, epoch + cfg.tune.perturbation_interval)
        trainer = build_torch_trainer(
            cfg, run_name=f"{trial_id}-from{epoch}", stop_at_epoch=stop, resume_from=start, **common
        )
        result = trainer.fit()
        metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float | str)}
        epoch = int(metrics.get("epoch", stop))
        start = result.checkpoint.path if result.checkpoint else None
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(start) if start else None)
    return epoch


# ---------------------------------------------------------------------------------------------------------------
# the driver


def check_sweep(cfg: Config) -> list[Dimension]:
    """Everything that can be checked before Ray starts: the space, the base config, the teacher's spec.

    Raises:
        ConfigError: one line naming the field.
    """
    from fovea.train.trainer import check_before_start, check_teacher_spec

    dimensions = parse_space(cfg)
    check_before_start(cfg)
    if "://" in cfg.train.storage_path:
        raise ConfigError(
            f"train.storage_path: {cfg.train.storage_path.partition('?')[0]}: a sweep keeps its state and reports in "
            "a folder (local, or NFS on a cluster); s3:// and gs:// storage is for training jobs"
        )
    if _may_distill(cfg, dimensions) and cfg.distill.type == "none":
        if not cfg.distill.teacher:
            raise ConfigError("tune.space.distill.type: trials that distill need distill.teacher")
        check_teacher_spec(cfg)
    for dimension in dimensions:  # a kwarg the constructor does not take fails every trial: say so now
        if dimension.path.startswith("model.kwargs."):
            values = {dimension.path: dimension.probes[0]}
            _, reason = trial_config(cfg.model_dump(mode="json"), values)
            if "unexpected keyword" in reason:
                raise ConfigError(f"tune.space.{dimension.path}: {reason}")
    if cfg.tune.scheduler == "asha" and cfg.tune.grace_period > cfg.train.epochs:
        raise ConfigError(f"tune.grace_period: {cfg.tune.grace_period} is more than train.epochs={cfg.train.epochs}")
    return dimensions


def _may_distill(cfg: Config, dimensions: list[Dimension]) -> bool:
    types = next((d.args for d in dimensions if d.path == "distill.type"), (cfg.distill.type,))
    return any(t != "none" for t in types)


def concurrent_trials(cfg: Config, resources: dict[str, float]) -> int:
    """How many trials run at once: ``tune.max_concurrent_trials``, else what the cluster's CPUs and GPUs fit.

    A trial holds ``num_workers x cpus_per_worker`` CPUs (elastic: the maximum) for its Train workers plus one for its
    Ray Data decode tasks (without it, trials that took every CPU would wait forever for their own data), and one GPU
    per worker when ``scaling.use_gpu``. The Tune trial function itself asks for no CPU: it only drives its Train run.
    """
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    per_trial = cfg.scaling.max_workers * cfg.scaling.cpus_per_worker + 1
    count = int(resources.get("CPU", 1) // per_trial)
    if cfg.scaling.use_gpu:
        count = min(count, int(resources.get("GPU", 0) // cfg.scaling.max_workers))
    return max(1, count)


def trial_resources(cfg: Config, concurrency: int, resources: dict[str, float]) -> dict[str, float]:
    """What Tune reserves for one trial function: no CPU (it only drives its Train run, whose workers ask for theirs).

    Ray needs some resource in a request, so a token of logical memory stands in. Under PBT the token is a
    ``1/concurrency`` share of the cluster's logical memory: PBT needs the whole population created at once (a
    paused trial still counts as live for the searcher's concurrency limit), so the shares are what keep at most
    ``concurrency`` trials running while the others wait, paused, at the same epoch.
    """
    if cfg.tune.scheduler == "pbt" and resources.get("memory"):
        return {"cpu": 0, "memory": resources["memory"] / (concurrency + 0.5)}  # k fit, k + 1 do not
    return {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}


def _scheduler(cfg: Config, dimensions: list[Dimension]) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    kind = cfg.tune.scheduler
    if kind == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            max_t=cfg.train.epochs,
            grace_period=cfg.tune.grace_period,
            reduction_factor=cfg.tune.reduction_factor,
        )
    if kind == "pbt":
        return PopulationBasedTraining(
            time_attr="epoch",
            perturbation_interval=cfg.tune.perturbation_interval,
            hyperparam_mutations={d.path: d.to_ray(grid_as_choice=True) for d in dimensions},
            quantile_fraction=cfg.tune.quantile_fraction,
            synch=True,  # exploit at the same epoch for every trial: fair comparisons on a small population
        )
    return FIFOScheduler()


def _search(cfg: Config, concurrency: int) -> tuple[Any, int | None]:
    """The search algorithm, and the ``max_concurrent_trials`` for TuneConfig (Ray's variant generator takes its own
    limit and ignores TuneConfig's)."""
    seed = cfg.tune.seed if cfg.tune.seed is not None else cfg.train.seed
    if cfg.tune.search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=TPESampler(seed=seed)), None if cfg.tune.scheduler == "pbt" else concurrency
    from ray.tune.search import BasicVariantGenerator

    if cfg.tune.scheduler == "pbt":  # the population is created at once; trial_resources limits how many run
        return BasicVariantGenerator(random_state=seed), None
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency), None


def _num_samples(cfg: Config) -> int:
    return 1 if cfg.tune.search == "grid" else cfg.tune.num_samples


def _maybe_bootstrap_teacher(cfg: Config, teacher_presets: Path | None) -> None:
    """Train and register ``distill.teacher`` first when it is a registry alias the registry lacks (opt-in)."""
    if not cfg.tune.bootstrap_teacher or not cfg.distill.teacher.startswith("models:/"):
        return
    from fovea.refs import parse_registry_uri
    from fovea.track import alias_exists, resolve_tracking_uri
    from fovea.train.trainer import run_training

    name, version, alias = parse_registry_uri(cfg.distill.teacher)
    uri = resolve_tracking_uri(cfg.track.uri)
    if version is not None:
        raise ConfigError("tune.bootstrap_teacher: give distill.teacher as models:/NAME@ALIAS to train it here")
    if alias_exists(uri, name, alias):
        return
    if teacher_presets is None or not (teacher_presets / f"{cfg.tune.bootstrap_teacher}.yaml").is_file():
        raise ConfigError(f"tune.bootstrap_teacher: no train_vit preset {cfg.tune.bootstrap_teacher!r}")
    from fovea.config import load_yaml

    data = {k: v for k, v in cfg.data.model_dump(mode="json").items() if k == "path" or k.startswith("demo")}
    teacher_cfg = build_config(
        [
            {"job": "train_vit"},
            load_yaml(teacher_presets / f"{cfg.tune.bootstrap_teacher}.yaml"),
            {
                "data": data,
                "train": {"storage_path": cfg.train.storage_path, "name": f"teacher-{name}-{int(time.time())}"},
                "track": {
                    "uri": cfg.track.uri,
                    "experiment": cfg.track.experiment,
                    "registered_model_name": name,
                    "champion_alias": alias,  # the registry lacks NAME@ALIAS: the new version takes it
                    "promote": "always",
                },
            },
        ]
    )
    print(
        f"teacher {cfg.distill.teacher} is not in the registry at {uri}: training it first "
        f"(tune.bootstrap_teacher={cfg.tune.bootstrap_teacher}: {teacher_cfg.model.name}, {teacher_cfg.train.epochs} "
        "epochs)",
        flush=True,
    )
    summary = run_training(teacher_cfg)
    print(f"teacher registered: {name} version {summary.registered_version} @{alias}, "
          f"val top-1 {summary.val_top1:.2f}%", flush=True)  # fmt: skip


def run_sweep(cfg: Config, teacher_presets: Path | None = None) -> SweepSummary:
    """Run (or resume) the sweep ``cfg`` describes, record it in MLflow and register its best model.

    Args:
        teacher_presets: the folder of train_vit presets, for ``tune.bootstrap_teacher``.
    """
    dimensions = check_sweep(cfg)
    started = time.time()
    paths = [d.path for d in dimensions]

    from fovea.train.trainer import (
        checked_manifest,
        dataset_dir_of,
        init_ray,
        load_checked_teacher,
        prepare_teacher,
        storage_path,
    )

    init_ray()
    _maybe_bootstrap_teacher(cfg, teacher_presets)
    import ray
    from ray import tune

    teacher = load_checked_teacher(cfg) if _may_distill(cfg, dimensions) else None
    dataset_dir = dataset_dir_of(cfg)
    manifest = checked_manifest(cfg, dataset_dir)  # missing or unreadable shards dropped (data.max_bad_shards)
    teacher_ref, teacher_source = prepare_teacher(cfg, teacher, manifest["classes"])

    sweep_name = default_sweep_name(cfg)
    storage = storage_path(cfg)
    sweep_dir = Path(storage) / sweep_name
    resuming = tune.Tuner.can_restore(str(sweep_dir))
    if resuming:
        _check_same_sweep(sweep_dir, cfg)

    tracking_uri = experiment_id = parent_run_id = None
    if cfg.track.enabled:
        from fovea.track import ensure_experiment, resolve_tracking_uri, start_sweep_run

        tracking_uri = resolve_tracking_uri(cfg.track.uri)
        experiment_id = ensure_experiment(tracking_uri, cfg.track.experiment)
        parent_run_id = start_sweep_run(
            tracking_uri,
            experiment_id,
            sweep_name=sweep_name,
            params={
                **{f"space.{d.path}": d.describe() for d in dimensions},
                **{f"tune.{k}": v for k, v in cfg.tune.model_dump(mode="json").items() if k != "space"},
                **{k: v for k, v in cfg.flat().items() if not k.startswith("tune.")},
            },
            tags={"fovea.job": cfg.job, "fovea.model": cfg.model.name, "fovea.dataset": str(dataset_dir)},
        )

    context = SweepContext(
        base=cfg.model_dump(mode="json"),
        paths=paths,
        manifest=manifest,
        dataset_dir=str(dataset_dir),
        sweep_name=sweep_name,
        train_storage=str(sweep_dir / "train_runs"),
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        teacher_ref=teacher_ref,
        teacher_source=teacher_source,
    )
    concurrency = concurrent_trials(cfg, ray.cluster_resources())
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), trial_resources(cfg, concurrency, ray.cluster_resources())
    )
    param_space = to_param_space(dimensions, cfg.tune.search)
    total = _num_samples(cfg) * grid_size(dimensions, cfg.tune.search)
    print(
        f"fovea {cfg.job}: sweep {sweep_name} {'resumed' if resuming else 'started'}: {total} trials of "
        f"{cfg.model.name}, {cfg.tune.search} search, {cfg.tune.scheduler} scheduler on {cfg.tune.metric} "
        f"({cfg.tune.mode}), {concurrency} at a time, up to {cfg.train.epochs} epochs each",
        flush=True,
    )
    for dimension in dimensions:
        print(f"  {dimension.path}: {dimension.describe()}", flush=True)

    table = TrialTable(paths, cfg.tune.metric, cfg.train.epochs, cfg.tune.mode)
    if resuming:
        tuner = tune.Tuner.restore(
            str(sweep_dir), trainable=trainable, param_space=param_space, resume_unfinished=True, resume_errored=True
        )
    else:
        _write_state(sweep_dir, cfg)
        search_alg, max_concurrent = _search(cfg, concurrency)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=cfg.tune.metric,
                mode=cfg.tune.mode,
                num_samples=_num_samples(cfg),
                scheduler=_scheduler(cfg, dimensions),
                search_alg=search_alg,
                max_concurrent_trials=max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=sweep_name,
                storage_path=storage,
                callbacks=[table],
                verbose=0,  # fovea's own trial table (TrialTable) replaces Tune's status printout
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2) if cfg.tune.scheduler == "pbt" else None,
            ),
        )
    if resuming:
        tuner._local_tuner._run_config.callbacks = [table]  # callbacks are not saved with the experiment
    grid = tuner.fit()
    rows = collect_rows(grid, context, cfg)
    unfinished = [r for r in rows if r["outcome"] == "unfinished"]
    if unfinished or len(rows) < total:  # Ctrl-C (Tune saved its state) before every trial ended or even began
        summary = SweepSummary(sweep_name, cfg.tune.metric, rows, paths, None, time.time() - started, parent_run_id,
                               tracking_uri, interrupted=True, not_started=total - len(rows))  # fmt: skip
        if tracking_uri and parent_run_id:
            from fovea.track import finish_run

            finish_run(tracking_uri, parent_run_id, status="KILLED")
        return summary
    return _finish(cfg, rows, paths, dimensions, sweep_name, sweep_dir, context, started)


def default_sweep_name(cfg: Config) -> str:
    """``tune.name``, else the job and a digest of the whole config: rerunning the same command finds the same sweep
    (and resumes it), while any change to the space or the base config starts a new one."""
    import hashlib

    if cfg.tune.name:
        return cfg.tune.name
    content = cfg.model_dump(mode="json")
    content["tune"].pop("name")
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.job}-{digest}"


def _write_state(sweep_dir: Path, cfg: Config) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / STATE_FILE).write_text(json.dumps({"config": cfg.redacted()}, indent=1))


def _check_same_sweep(sweep_dir: Path, cfg: Config) -> None:
    """A resumed sweep must search the same space with the same scheduler as the one it continues."""
    state_file = sweep_dir / STATE_FILE
    if not state_file.is_file():
        return
    saved = json.loads(state_file.read_text())["config"]["tune"]
    now = cfg.redacted()["tune"]  # as it was saved
    for key in ("space", "search", "scheduler", "metric", "mode", "num_samples"):
        if saved.get(key) != now.get(key):
            raise ConfigError(
                f"tune.{key}: sweep {cfg.tune.name!r} exists with tune.{key}={saved.get(key)!r}; rerun it as it was "
                "to resume it, or give a new tune.name"
            )


def collect_rows(grid: Any, context: SweepContext, cfg: Config) -> list[dict[str, Any]]:
    """One row per trial: its values, outcome (completed, early_stopped, skipped, errored), epochs and metric."""
    metric = cfg.tune.metric
    rows = []
    trials = list(grid._experiment_analysis.trials)  # same order as the grid's results
    for result, trial in zip(grid, trials, strict=True):
        values = {p: trial.config.get(p) for p in context.paths}
        history = result.metrics_dataframe
        scores = [] if history is None or metric not in history else [float(v) for v in history[metric].dropna()]
        metrics = result.metrics or {}
        row: dict[str, Any] = {
            "trial_id": trial.trial_id,
            "params": values,
            "epochs": int(metrics["epoch"]) if "epoch" in metrics else None,
            "last": float(metrics[metric]) if metric in metrics else None,
            "best": None,
            "run_id": metrics.get("mlflow_run_id") or None,
            # ASHA/FIFO: the Train run's checkpoint (TuneReportCallback); PBT: the copy Tune keeps for the trial
            "checkpoint_path": metrics.get("checkpoint_path") or (result.checkpoint and result.checkpoint.path),
            "reason": "",
        }
        if row["last"] is not None:  # a PBT trial restored from a checkpoint keeps only its later history
            scores.append(row["last"])
        if scores:
            row["best"] = max(scores) if cfg.tune.mode == "max" else min(scores)
        if trial.status not in ("TERMINATED", "ERROR"):
            row["outcome"] = "unfinished"
            rows.append(row)
            continue
        if result.error is not None:
            row["outcome"] = "errored"
            row["reason"] = str(result.error).strip().splitlines()[-1][:300]
        elif row["last"] is None:
            _, reason = trial_config(context.base, values)
            row["outcome"], row["reason"] = ("skipped", reason) if reason else ("unfinished", "")
        elif (row["epochs"] or 0) < cfg.train.epochs:
            row["outcome"] = "early_stopped"
        else:
            row["outcome"] = "completed"
        rows.append(row)
    rows.sort(key=lambda r: str(r["trial_id"]))
    return rows


def _best(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The best trial that trained every epoch (an early-stopped trial's score is from fewer epochs)."""
    finished = [r for r in rows if r["outcome"] == "completed" and r["last"] is not None and math.isfinite(r["last"])]
    if not finished:
        return None
    return (max if mode == "max" else min)(finished, key=lambda r: r["last"])


def _finish(
    cfg: Config,
    rows: list[dict[str, Any]],
    paths: list[str],
    dimensions: list[Dimension],
    sweep_name: str,
    sweep_dir: Path,
    context: SweepContext,
    started: float,
) -> SweepSummary:
    best = _best(rows, cfg.tune.mode)
    summary = SweepSummary(
        name=sweep_name,
        metric=cfg.tune.metric,
        rows=rows,
        paths=paths,
        best=best,
        wall_time_s=time.time() - started,
        parent_run_id=context.parent_run_id,
        tracking_uri=context.tracking_uri,
    )
    results_dir = sweep_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(rows, paths, cfg.tune.metric, results_dir / "results.csv")
    files = [csv_path]
    if best is not None:
        best_cfg = build_config([apply_values(context.base, best["params"])])
        best_file = results_dir / "best_config.yaml"
        import yaml

        best_file.write_text(yaml.safe_dump(best_cfg.redacted(), sort_keys=False))
        files.append(best_file)
    numeric = {d.path: d.numeric for d in dimensions}
    figures = {f"objective_vs_{short_name(p)}.png": plot_objective(rows, p, cfg.tune.metric, numeric[p]) for p in paths}
    axes = map_axes(paths, numeric)
    if axes:
        figures[map_file_name(axes[0], axes[1])] = plot_map(rows, axes[0], axes[1], cfg.tune.metric, axes[2])
    for name, figure in figures.items():
        figure.savefig(results_dir / name)
    summary.artifacts = [str(p) for p in files] + [str(results_dir / n) for n in figures]
    if context.tracking_uri and context.parent_run_id:
        _record_in_mlflow(cfg, summary, context, files, figures)
    return summary


def _record_in_mlflow(
    cfg: Config, summary: SweepSummary, context: SweepContext, files: list[Path], figures: dict[str, Any]
) -> None:
    from fovea.track import end_trial_run, finish_run, log_sweep_results

    uri, parent = context.tracking_uri, context.parent_run_id
    for row in summary.rows:
        # ASHA stops a trial right after its last report (also at max_t), before the trial could close its run
        if row["run_id"] and row["outcome"] != "skipped":
            end_trial_run(
                uri,
                row["run_id"],
                outcome=row["outcome"],
                epochs=row["epochs"],
                reason=row["reason"],
                status="FAILED" if row["outcome"] == "errored" else "FINISHED",
            )
    counts = {f"trials_{o}": float(sum(r["outcome"] == o for r in summary.rows)) for o in ("completed", "early_stopped",
              "skipped", "errored")}  # fmt: skip
    metrics = {**counts, "trials": float(len(summary.rows)), "sweep_time_s": summary.wall_time_s}
    tags = {}
    if summary.best is not None:
        metrics[f"best_{cfg.tune.metric}"] = summary.best["last"]
        tags = {"fovea.best_trial": str(summary.best["trial_id"]), "fovea.best_run_id": summary.best["run_id"] or ""}
        for path in summary.paths:
            tags[f"fovea.best.{path}"] = str(summary.best["params"][path])
    log_sweep_results(uri, parent, files=files, metrics=metrics, tags=tags, figures=figures)
    if summary.best is not None and cfg.tune.register_best and summary.best.get("checkpoint_path"):
        _register_best(cfg, summary, context)
    finish_run(uri, parent)


def _register_best(cfg: Config, summary: SweepSummary, context: SweepContext) -> None:
    """Log the best trial's final model to its run, register it, and move the champion alias when it earns it."""
    from fovea.data import manifest_hash
    from fovea.track import log_sweep_results, promote_new_version, registered_version_of_run
    from fovea.train.trainer import log_final_model_of, read_state

    best = summary.best
    uri = context.tracking_uri
    best_cfg = build_config([apply_values(context.base, best["params"])])
    name = cfg.track.registered_model_name or best_cfg.model.name
    version = registered_version_of_run(uri, name, best["run_id"])
    if version is None:  # a rerun of a finished sweep registers nothing twice
        state = read_state(best["checkpoint_path"])
        history = json.loads(state["history"])
        _, version, _ = log_final_model_of(
            best_cfg,
            state,
            uri,
            best["run_id"],
            context.manifest["classes"],
            Path(context.dataset_dir),
            history[-1],
            promote=False,
            extra_tags={
                "sweep": summary.name,
                "trial_id": str(best["trial_id"]),
                cfg.tune.metric: f"{best['last']:.4f}",
            },
        )
    summary.registered_model, summary.registered_version = name, version
    if version is None:
        return
    _, summary.promotion = promote_new_version(
        uri,
        name,
        version,
        score=best["last"],
        metric=cfg.tune.metric,
        mode=cfg.tune.mode,
        policy=cfg.track.promote,
        champion_alias=cfg.track.champion_alias,
        challenger_alias=cfg.track.challenger_alias,
        min_delta=cfg.track.promote_min_delta,
        dataset=context.dataset_dir,
        manifest_hash=manifest_hash(context.dataset_dir),
    )
    log_sweep_results(
        uri,
        summary.parent_run_id,
        files=[],
        metrics={},
        tags={"fovea.registered_version": str(version), "fovea.promotion": summary.promotion},
        figures={},
    )


class TrialTableBase:
    """The live trial table's state and text (kept apart from Ray's ``Callback`` so it can be tested alone)."""

    def __init__(self, paths: list[str], metric: str, epochs: int, every_s: float = 30.0, mode: str = "max") -> None:
        self.paths, self.metric, self.epochs, self.every_s = paths, metric, epochs, every_s
        self.better = max if mode == "max" else min
        self.rows: dict[str, dict[str, Any]] = {}
        self._printed = 0.0

    def update(self, trial_id: str, config: dict[str, Any], result: dict[str, Any] | None, status: str) -> None:
        row = self.rows.setdefault(
            trial_id,
            {"trial_id": trial_id, "params": {p: config.get(p) for p in self.paths}, "best": None, "last": None},
        )
        row["outcome"] = status
        if result and self.metric in result:
            score = float(result[self.metric])
            row["last"], row["epochs"] = score, int(result.get("epoch", 0))
            row["best"] = score if row["best"] is None else self.better(row["best"], score)

    def render(self) -> str:
        rows = sorted(self.rows.values(), key=lambda r: r["trial_id"])
        done = sum(r["outcome"] not in ("running", "pending") for r in rows)
        table = format_table(rows, self.paths, self.metric)
        return f"trials: {done}/{len(rows)} done (epochs of {self.epochs})\n{table}"

    def maybe_print(self, force: bool = False) -> None:
        if force or time.time() - self._printed >= self.every_s:
            self._printed = time.time()
            print("\n" + self.render() + "\n", flush=True)


def _make_trial_table() -> type:
    from ray.tune import Callback

    class _TrialTable(TrialTableBase, Callback):
        """Prints the trial table when a trial ends and at most every ``every_s`` seconds in between."""

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.update(trial.trial_id, trial.config, None, "running")

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.update(trial.trial_id, trial.config, result, "running")
            self.maybe_print()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            last = trial.last_result or {}
            if self.metric not in last:
                status = "skipped"
            elif int(last.get("epoch", 0)) < self.epochs:
                status = "stopped"
            else:
                status = "done"
            self.update(trial.trial_id, trial.config, last, status)
            self.maybe_print(force=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.update(trial.trial_id, trial.config, None, "errored")
            self.maybe_print(force=True)

    return _TrialTable


def TrialTable(paths: list[str], metric: str, epochs: int, mode: str = "max") -> Any:  # noqa: N802  (a factory)
    """The live trial table, a Ray Tune ``Callback`` (built on first use: importing ray.tune is slow)."""
    return _make_trial_table()(paths, metric, epochs, mode=mode)


def sweep_main(job: str, configs_dir: str | Path, description: str = "", argv: list[str] | None = None,
               teacher_presets: Path | None = None) -> int:  # fmt: skip
    """A sweep job's whole command line: parse and check (before Ray), run the sweep, print the summary.

    Returns:
        0 on success, 130 when interrupted (rerun to resume), 2 for a configuration problem.
    """
    from fovea.jobs import run_command

    return run_command(
        job, configs_dir, description, argv, check=check_sweep, run=lambda cfg: run_sweep(cfg, teacher_presets)
    )
