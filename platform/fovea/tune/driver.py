"""The sweep driver: a Ray Tune ``Tuner`` whose trials each build and run a Ray Train ``TorchTrainer``.

Ray Train V2 pattern: the Tune trial is a small driver function (no CPUs of its own) that builds the trial's
config from the sampled values, opens the trial's nested MLflow run, and runs a ``TorchTrainer`` whose per-epoch
reports reach Tune through ``TuneReportCallback``. ASHA stops weak trials on those reports. PBT trains each trial a
few epochs at a time and hands Tune the checkpoint after each stretch, so Tune can copy the best trials' weights into
the worst (exploit) and perturb their values (explore). Rerunning a sweep's command with the same ``tune.name``
restores the Tuner: finished trials are kept, unfinished ones continue from their last checkpoint.

Here: the checks before Ray starts, how many trials run at once and what each reserves, the scheduler and the search,
the teacher bootstrap, ``run_sweep`` and its steps, the sweep's state file and ``sweep_main``. What one trial runs is
in ``fovea.tune.trial``; the rows, the best trial, the MLflow record and the trial table are in ``fovea.tune.results``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fovea.config import Config, ConfigError, build_config
from fovea.tune.results import SweepSummary, TrialTable, collect_rows, finish, finish_interrupted
from fovea.tune.space import Dimension, grid_size, parse_space, to_param_space
from fovea.tune.trial import SweepContext, run_trial, trial_config

STATE_FILE = "fovea_sweep.json"
TRIAL_DRIVER_MEMORY = 64 * 1024**2


def check_sweep(cfg: Config) -> list[Dimension]:
    """Everything that can be checked before Ray starts: the space, the base config, the teacher's spec.

    Raises:
        ConfigError: one line naming the field.
    """
    from fovea.train.checks import check_before_start, check_teacher_spec

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


def make_scheduler(cfg: Config, dimensions: list[Dimension]) -> Any:
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


def make_search(cfg: Config, concurrency: int) -> tuple[Any, int | None]:
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
    from fovea.config.schema import folder_name

    run_name = folder_name(f"teacher-{name}-{int(time.time())}")  # a registry name may hold any character
    data = {k: v for k, v in cfg.data.model_dump(mode="json").items() if k == "path" or k.startswith("demo")}
    teacher_cfg = build_config(
        [
            {"job": "train_vit"},
            load_yaml(teacher_presets / f"{cfg.tune.bootstrap_teacher}.yaml"),
            {
                "data": data,
                "train": {"storage_path": cfg.train.storage_path, "name": run_name},
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

    from fovea.train.trainer import storage_path

    dataset_dir, manifest, teacher_ref, teacher_source = prepare_inputs(cfg, dimensions, teacher_presets)
    from ray import tune

    sweep_name = default_sweep_name(cfg)
    storage = storage_path(cfg)
    sweep_dir = Path(storage) / sweep_name
    resuming = tune.Tuner.can_restore(str(sweep_dir))
    if resuming:
        check_same_sweep(sweep_dir, cfg)

    tracking_uri, experiment_id, parent_run_id = open_sweep_run(cfg, dimensions, sweep_name, dataset_dir)
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
    tuner, total = build_tuner(cfg, dimensions, context, storage, sweep_dir, resuming)
    from fovea.console import stop_sweep_on_sigterm

    stop_sweep_on_sigterm()  # SIGTERM stops the sweep as Ctrl-C does: Tune saves its state, the rerun resumes it
    grid = tuner.fit()
    rows = collect_rows(grid, context, cfg)
    unfinished = [r for r in rows if r["outcome"] == "unfinished"]
    if unfinished or len(rows) < total:  # Ctrl-C (Tune saved its state) before every trial ended or even began
        return finish_interrupted(cfg, rows, paths, context, started, not_started=total - len(rows))
    return finish(cfg, rows, paths, dimensions, sweep_name, sweep_dir, context, started)


def prepare_inputs(
    cfg: Config, dimensions: list[Dimension], teacher_presets: Path | None
) -> tuple[Path | str, dict[str, Any], Any, str | None]:
    """Start Ray and resolve what every trial shares: ``(dataset_dir, manifest, teacher_ref, teacher_source)``.

    The teacher is trained first when ``tune.bootstrap_teacher`` asks for it, and loaded only when trials may distill.
    """
    from fovea.train.checks import STEP_FIELDS, check_optimizer_steps, load_checked_teacher
    from fovea.train.trainer import checked_manifest, dataset_dir_of, init_ray, prepare_teacher

    init_ray()
    _maybe_bootstrap_teacher(cfg, teacher_presets)
    teacher = load_checked_teacher(cfg) if _may_distill(cfg, dimensions) else None
    dataset_dir = dataset_dir_of(cfg)
    manifest = checked_manifest(cfg, dataset_dir)  # missing or unreadable shards dropped (data.max_bad_shards)
    if not any(dimension.path in STEP_FIELDS for dimension in dimensions):  # else each trial is checked
        check_optimizer_steps(cfg, manifest["splits"]["train"]["count"])
    teacher_ref, teacher_source = prepare_teacher(cfg, teacher, manifest["classes"])
    return dataset_dir, manifest, teacher_ref, teacher_source


def open_sweep_run(
    cfg: Config, dimensions: list[Dimension], sweep_name: str, dataset_dir: Path | str
) -> tuple[str | None, str | None, str | None]:
    """The sweep's MLflow parent run: ``(tracking_uri, experiment_id, parent_run_id)``, all None without tracking."""
    if not cfg.track.enabled:
        return None, None, None
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
    return tracking_uri, experiment_id, parent_run_id


def build_tuner(
    cfg: Config, dimensions: list[Dimension], context: SweepContext, storage: str, sweep_dir: Path, resuming: bool
) -> tuple[Any, int]:
    """The sweep's ``Tuner`` (restored when ``resuming``) with fovea's trial table, and how many trials it runs.

    Prints the sweep's opening lines: what it searches, how, and how many trials at a time.
    """
    import ray
    from ray import tune

    concurrency = concurrent_trials(cfg, ray.cluster_resources())
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), trial_resources(cfg, concurrency, ray.cluster_resources())
    )
    param_space = to_param_space(dimensions, cfg.tune.search)
    total = _num_samples(cfg) * grid_size(dimensions, cfg.tune.search)
    print(
        f"fovea {cfg.job}: sweep {context.sweep_name} {'resumed' if resuming else 'started'}: {total} trials of "
        f"{cfg.model.name}, {cfg.tune.search} search, {cfg.tune.scheduler} scheduler on {cfg.tune.metric} "
        f"({cfg.tune.mode}), {concurrency} at a time, up to {cfg.train.epochs} epochs each",
        flush=True,
    )
    for dimension in dimensions:
        print(f"  {dimension.path}: {dimension.describe()}", flush=True)

    table = TrialTable(context.paths, cfg.tune.metric, cfg.train.epochs, cfg.tune.mode)
    if resuming:
        tuner = tune.Tuner.restore(
            str(sweep_dir), trainable=trainable, param_space=param_space, resume_unfinished=True, resume_errored=True
        )
        tuner._local_tuner._run_config.callbacks = [table]  # callbacks are not saved with the experiment
        return tuner, total
    write_state(sweep_dir, cfg)
    search_alg, max_concurrent = make_search(cfg, concurrency)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=cfg.tune.metric,
            mode=cfg.tune.mode,
            num_samples=_num_samples(cfg),
            scheduler=make_scheduler(cfg, dimensions),
            search_alg=search_alg,
            max_concurrent_trials=max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=context.sweep_name,
            storage_path=storage,
            callbacks=[table],
            verbose=0,  # fovea's own trial table (TrialTable) replaces Tune's status printout
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2) if cfg.tune.scheduler == "pbt" else None,
        ),
    )
    return tuner, total


def default_sweep_name(cfg: Config) -> str:
    """``tune.name``, else the job and a digest of the whole config: rerunning the same command finds the same sweep
    (and resumes it), while any change to the space or the base config starts a new one."""
    import hashlib

    if cfg.tune.name:
        return cfg.tune.name
    content = cfg.model_dump(mode="json")
    content["tune"].pop("name")
    content["train"].pop("verbose", None)  # how much it prints is not another sweep
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.job}-{digest}"


def write_state(sweep_dir: Path, cfg: Config) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / STATE_FILE).write_text(json.dumps({"config": cfg.redacted()}, indent=1))


def check_same_sweep(sweep_dir: Path, cfg: Config) -> None:
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
