"""What runs one trial of a sweep: its config from the sampled values, its MLflow run and its ``TorchTrainer``.

The Tune trial is a small driver function (no CPUs of its own) that builds the trial's config from the sampled values,
opens the trial's nested MLflow run, and runs a ``TorchTrainer`` whose per-epoch reports reach Tune through
``TuneReportCallback``. Under PBT it trains a few epochs at a time and hands Tune the checkpoint after each stretch.
``SweepContext`` is what every trial shares; ``trial_config`` also serves the driver's checks and the results table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fovea.config import Config, ConfigError, build_config
from fovea.errors import typed_line
from fovea.tune.report import short_name
from fovea.tune.space import apply_values


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


def cli_value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def trial_config(
    base: dict[str, Any], values: dict[str, Any], train_count: int | None = None
) -> tuple[Config | None, str]:
    """The trial's config, or why the trial cannot run (a value the schema or the architecture rejects, or, given the
    train split's ``train_count`` rows, a batch too large for any optimizer step).

    The model is built on the ``meta`` device (shapes only, no memory) so architecture constraints, such as a Swin
    window that does not tile every stage's feature map, are found before any Ray Train worker starts.
    """
    import torch

    from fovea.models import create_model, is_video_model, window_fit_problem
    from fovea.train.checks import check_optimizer_steps

    try:
        cfg = build_config([apply_values(base, values)])
        if train_count is not None:
            check_optimizer_steps(cfg, train_count)
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
        return None, f"{cfg.model.name} cannot be built: {typed_line(err)}"
    problem = window_fit_problem(model)
    if problem:
        return None, f"model.window_size={cfg.model.window_size or 'preset'}: {problem}"
    return cfg, ""


def _trial_label(trial_id: str, values: dict[str, Any]) -> str:
    return f"{trial_id} " + " ".join(f"{short_name(p)}={cli_value(v)}" for p, v in values.items())


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
    cfg, reason = trial_config(context.base, values, train_count=context.manifest["splits"]["train"]["count"])
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
