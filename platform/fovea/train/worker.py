"""The function every Ray Train worker runs: build the model, restore, train, evaluate, checkpoint, report."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from fovea.checkpoints import checkpoint_location, load_run_checkpoint, save_checkpoint
from fovea.config import Config
from fovea.data.device_decode import decode_batch
from fovea.distill import DistillationLoss, Teacher, use_distillation_token
from fovea.models import create_model
from fovea.recipe import model_input_args
from fovea.train.loop import (
    FUSED_OPTIMIZERS,
    NanAtSteps,
    NonFiniteSteps,
    NonFiniteTraining,
    Normalize,
    TrainingSnapshot,
    build_criterion,
    build_mixup,
    build_optimizer,
    build_scheduler,
    compile_enabled,
    configure_device,
    enable_grad_checkpointing,
    evaluate,
    move_schedule,
    normalization,
    peak_memory_mb,
    prefetch_to_device,
    restore_hyperparameters,
    scale_learning_rates,
    train_one_epoch,
    unwrap,
)

CURVES_EVERY_S = 300.0  # rank 0 redraws training_curves.png at most this often (MLflow's UI charts metrics live)


def _sum_across_workers(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def save_training_checkpoint(directory: Path, state: dict[str, Any], cfg: Config) -> Path:
    """The training state as ``directory/checkpoint.pt`` (atomic, checksummed), with the run's config as JSON under
    ``"config"``, secrets redacted (``Config.redacted``): nothing secret reaches a file."""
    return save_checkpoint(directory, {**state, "config": json.dumps(cfg.redacted())})


def restore_state(checkpoint: ray.train.Checkpoint, *, fallback: bool, verbose: bool) -> dict[str, Any]:
    """The training state in ``checkpoint``, verified against its checksum.

    With ``fallback`` (the run's own checkpoint, as Ray hands it on resume) a checkpoint that does not verify gives
    way to the newest earlier checkpoint of the run that does, with a one-line warning (printed when ``verbose``).

    Raises:
        CheckpointError: no checkpoint to resume from verifies (one line naming them).
    """
    location = checkpoint_location(checkpoint)
    scheme = location[: len(location) - len(checkpoint.path)] if location.endswith(checkpoint.path) else ""
    state, _, warning = load_run_checkpoint(checkpoint.path, checkpoint.filesystem, scheme=scheme, fallback=fallback)
    if warning and verbose:
        print(warning, flush=True)
    return state


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. ``loop_config`` carries the run config plus what the driver resolved.

    Keys: ``config`` (``Config`` as a dict), ``classes``, ``train_count``, ``tracking_uri`` (None = off),
    ``experiment_id``, ``run_name``, ``run_tags``; optional: ``run_id`` (the MLflow run to log into, e.g. a sweep's
    trial run), ``stop_at_epoch`` (return after that epoch), ``progress_prefix``, ``initial_checkpoint`` (a folder to
    start from when the run has no checkpoint of its own).
    """
    config = loop_config["config"]  # a config with secrets comes through the object store (see build_torch_trainer)
    cfg = Config.model_validate(config if isinstance(config, dict) else ray.get(config))
    classes: list[str] = loop_config["classes"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if world > 1:  # where each worker runs: a multi-node run shows its spread here
        node = ray.get_runtime_context().get_node_id()
        print(f"{loop_config.get('progress_prefix', '')}worker {rank}/{world} on node {node}", flush=True)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(cfg.train.seed)  # same init everywhere (DDP also broadcasts rank 0's weights)
    device = ray.train.torch.get_device()
    configure_device(device)
    pin = device.type == "cuda"  # pinned host batches: the copies to the GPU run asynchronously

    model = create_model(
        cfg.model.name,
        num_classes=len(classes),
        img_size=cfg.model.img_size,
        pretrained=cfg.model.pretrained,
        checkpoint=cfg.model.checkpoint,
        window_size=cfg.model.window_size,
        drop_rate=cfg.model.drop_rate,
        drop_path_rate=cfg.model.drop_path_rate,
        **model_input_args(cfg),
        **cfg.model.kwargs,
    ).to(device)
    mean, std = normalization(model, cfg.data)
    normalize = Normalize(mean, std).to(device)
    teacher = None
    if cfg.distill.type != "none":
        teacher = _build_teacher(cfg, loop_config["teacher"], model, mean=mean, std=std, device=device)

    batch_size = cfg.data.batch_size
    steps_per_epoch = max(1, loop_config["train_count"] // world // batch_size // cfg.optim.accum_steps)
    if cfg.train.grad_checkpointing:
        enable_grad_checkpointing(model, cfg.model.name)
    # fused Adam/AdamW: one kernel for all parameters, and a non-finite step is skipped on the device
    optimizer = build_optimizer(model, cfg.optim, fused=cfg.optim.name in FUSED_OPTIMIZERS)
    scheduler = build_scheduler(
        optimizer,
        total_steps=steps_per_epoch * cfg.train.epochs,
        warmup_steps=int(cfg.optim.warmup_epochs * steps_per_epoch),
        kind=cfg.optim.sched,
        min_lr_ratio=cfg.optim.min_lr / cfg.optim.lr,
    )
    ema = None
    if cfg.train.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.train.ema_decay)

    start_epoch, global_step, history, run_id = 0, 0, [], None  # run_id: the MLflow run the checkpoint logged to
    lr_scale, rollbacks = 1.0, 0  # after rollbacks (non-finite steps): the learning rate's factor, their count
    checkpoint = ray.train.get_checkpoint()
    own_checkpoint = checkpoint is not None
    if checkpoint is None and loop_config.get("initial_checkpoint"):  # this run's own checkpoints come first
        checkpoint = ray.train.Checkpoint.from_directory(loop_config["initial_checkpoint"])
    if checkpoint is not None:
        state = restore_state(checkpoint, fallback=own_checkpoint, verbose=rank == 0)
        model.load_state_dict(state["model"])
        fresh_groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # A checkpoint from another trial (PBT's exploit) carries that trial's hyperparameters: keep this run's.
        restore_hyperparameters(optimizer, scheduler, fresh_groups)
        if own_checkpoint and state.get("lr_scale", 1.0) != 1.0:  # rollbacks lowered this run's learning rate
            lr_scale = state["lr_scale"]
            scale_learning_rates(optimizer, scheduler, lr_scale)
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        start_epoch, global_step = state["epoch"], state["global_step"]
        history, run_id = json.loads(state["history"]), state.get("mlflow_run_id")
        saved_world = state.get("world_size", world)
        if saved_world != world:  # elastic: another worker count, so another number of steps per epoch
            saved_steps = state.get("steps_per_epoch") or steps_per_epoch
            move_schedule(optimizer, scheduler, round(scheduler.last_epoch * steps_per_epoch / saved_steps))
        if rank == 0:
            resized = f" with {world} workers (was {saved_world})" if saved_world != world else ""
            name = loop_config["run_name"]
            print(f"resuming {name} from its checkpoint: epoch {start_epoch + 1}{resized}", flush=True)

    model = ray.train.torch.prepare_model(model, move_to_device=False)
    if compile_enabled(cfg.train.compile, device):
        model = torch.compile(model, mode=cfg.train.compile_mode)

    checkpoint_run_id = run_id
    run_id = loop_config.get("run_id") or run_id
    tracker = None
    if rank == 0 and loop_config.get("tracking_uri"):
        from fovea.track import RunLogger

        tracker = RunLogger(
            loop_config["tracking_uri"],
            run_id=run_id,
            experiment_id=loop_config["experiment_id"],
            run_name=loop_config["run_name"],
            params=cfg.flat(),
            tags=loop_config.get("run_tags", {}),
            flush_interval_s=cfg.track.flush_interval_s,
            # the epochs this run's checkpoint has: any a lost worker never sent go to the store (not those of another
            # trial's checkpoint, as in PBT's exploit)
            backfill=history if run_id and run_id == checkpoint_run_id else (),
        )
        if checkpoint is None or loop_config.get("run_id"):
            tracker.log_dict(cfg.redacted(), "config.yaml")

    log_every = cfg.track.log_every_steps

    def on_step(step: int, loss: float, lr: float) -> None:  # every log_every steps
        if tracker is not None:
            tracker.log_metrics({"step/train_loss": loss, "step/lr": lr}, step=step)

    mixup = build_mixup(cfg.data, num_classes=len(classes), label_smoothing=cfg.train.label_smoothing)
    criterion = build_criterion(mixup=mixup, label_smoothing=cfg.train.label_smoothing)
    if teacher is not None:
        criterion = DistillationLoss(
            cfg.distill.type,
            alpha=cfg.distill.alpha,
            tau=cfg.distill.tau,
            kl_reduction=cfg.distill.kl_reduction,
            # mixup's soft targets already carry the smoothing; either way it reaches the label term only
            label_smoothing=0.0 if mixup is not None else cfg.train.label_smoothing,
        )
    if cfg.train.inject_nan_steps:  # fault injection: NaN losses at these steps
        criterion = NanAtSteps(criterion, cfg.train.inject_nan_steps)

    def device_batches(shard: Any, *, batch_size: int, rows: list[int] | None = None, **options: Any) -> Any:
        """A shard's batches on this worker's device: uint8 tensors copied a batch ahead from pinned memory, or
        (``data.jpeg_decode=device``) JPEG batches decoded on the device. With ``rows`` (a one-item list) every row
        is counted there and the last, partial batch dropped (``drop_last``, done here so that the count sees it)."""
        if cfg.data.jpeg_decode == "device":
            raw = shard.iter_batches(
                batch_size=batch_size, batch_format="numpy", prefetch_batches=cfg.data.prefetch_batches, **options
            )
            raw = raw if rows is None else _full_batches(raw, batch_size, rows)
            return (decode_batch(batch, img_size=cfg.model.img_size, device=device) for batch in raw)
        batches = shard.iter_torch_batches(
            batch_size=batch_size, prefetch_batches=cfg.data.prefetch_batches, device="cpu", pin_memory=pin, **options
        )
        return prefetch_to_device(batches if rows is None else _full_batches(batches, batch_size, rows), device)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    eval_batch_size = cfg.eval_batch_size

    def val_batches() -> Any:
        return device_batches(val_shard, batch_size=eval_batch_size)

    num_views = cfg.num_views
    views_shard = ray.train.get_dataset_shard("val_views") if loop_config.get("multi_view") else None

    if teacher is not None and checkpoint is None:
        # the teacher's own score on this val split: a student can hardly beat a teacher that cannot classify
        teacher_val = evaluate(teacher, val_batches(), normalize=normalize, device=device, precision="fp32")
        if tracker is not None:
            tracker.log_metrics({"teacher_val_top1": teacher_val["top1"], "teacher_val_top5": teacher_val["top5"]}, 0)
        if rank == 0:
            print(
                f"teacher {loop_config.get('teacher_source', '')}: val top-1 {teacher_val['top1']:.2f}% "
                f"top-5 {teacher_val['top5']:.2f}% | {cfg.distill.type} distillation, alpha {cfg.distill.alpha}, "
                f"tau {cfg.distill.tau}",
                flush=True,
            )
    last_epoch = min(cfg.train.epochs, loop_config.get("stop_at_epoch") or cfg.train.epochs)
    curves_drawn = time.perf_counter()
    prefix = loop_config.get("progress_prefix", "")
    # the state a rollback returns to: a host-memory copy of weights, optimizer, schedule and EMA after each epoch
    # (about 3x the weights for AdamW), kept only when rollbacks can happen
    can_roll_back = cfg.train.nonfinite_patience > 0 and cfg.train.nonfinite_action == "rollback"
    snapshot = TrainingSnapshot()
    if can_roll_back:
        snapshot.take(
            model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, epoch=start_epoch, step=global_step
        )
    epoch = start_epoch
    try:
        while epoch < last_epoch:
            rows = [0]
            batches = device_batches(
                train_shard,
                batch_size=batch_size,
                rows=rows,
                local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            )
            try:
                stats = train_one_epoch(
                    model,
                    batches,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    criterion=criterion,
                    normalize=normalize,
                    device=device,
                    precision=cfg.train.precision,
                    accum_steps=cfg.optim.accum_steps,
                    grad_clip=cfg.optim.grad_clip,
                    mixup=mixup,
                    ema=ema,
                    on_step=on_step,
                    log_every=log_every,
                    start_step=global_step,
                    teacher=teacher,
                    patience=cfg.train.nonfinite_patience,
                )
            except NonFiniteSteps as fault:
                rollbacks += 1
                event = f"epoch {epoch + 1}: {fault}"
                if tracker is not None:
                    tracker.log_metrics({"nonfinite_run": fault.run, "nonfinite_events": rollbacks}, step=fault.step)
                if cfg.train.nonfinite_action == "stop" or rollbacks > cfg.train.max_rollbacks:
                    why = (
                        "train.nonfinite_action=stop"
                        if cfg.train.nonfinite_action == "stop"
                        else (f"{cfg.train.max_rollbacks} rollbacks already (train.max_rollbacks)")
                    )
                    raise NonFiniteTraining(f"{event}; stopping: {why}") from None
                epoch, global_step = snapshot.restore(
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    ema=ema,
                    lr_factor=cfg.train.rollback_lr_factor,
                )
                lr_scale *= cfg.train.rollback_lr_factor
                del history[epoch:]  # the epochs trained again
                if tracker is not None:
                    tracker.log_metrics({"rollbacks": rollbacks, "lr_scale": lr_scale}, step=global_step)
                if rank == 0:
                    print(
                        f"{prefix}warning: {event}; rolled back to the end of epoch {epoch} with the learning rate x"
                        f"{cfg.train.rollback_lr_factor:g} (now x{lr_scale:g} of the config's; rollback {rollbacks} of"
                        f" at most {cfg.train.max_rollbacks})",
                        flush=True,
                    )
                continue
            global_step += stats.steps
            val = evaluate(model, val_batches(), normalize=normalize, device=device, precision=cfg.train.precision)
            applied = stats.steps - stats.skipped_batches
            loss_sum, applied_sum, samples, seconds_sum, skipped, train_rows = _sum_across_workers(
                [
                    stats.loss * applied,
                    float(applied),
                    float(stats.samples),
                    stats.seconds,
                    float(stats.skipped_batches),
                    float(rows[0]),
                ],
                device,
            )
            # rows a shard that failed to read took with it (Ray Data skipped it within data.max_bad_shards), or that
            # no longer decode; each worker's share is evened out by dropping at most world - 1 rows: not counted
            missing = {
                split: short
                for split, expected, got in (
                    ("train", loop_config["train_count"], train_rows),
                    ("val", loop_config.get("val_count", 0), val["count"]),
                )
                if (short := int(expected - got)) >= world
            }
            metrics = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(1.0, applied_sum),
                "val_loss": val["loss"],
                "val_top1": val["top1"],
                "val_top5": val["top5"],
                "train_samples": samples,
                "val_samples": val["count"],
                "samples_per_sec": samples / max(1e-9, seconds_sum / world),
                "epoch_time_s": stats.seconds,
                "lr": optimizer.param_groups[0]["lr"],
                "skipped_steps": skipped,
                "train_rows": train_rows,
                "data_missing_rows": sum(missing.values()),
                "workers": world,  # changes in an elastic run
                "peak_memory_mb": peak_memory_mb(device),  # rank 0's: GPU memory allocated, or the process's RSS
            }
            if "top1_cls" in val:  # a distillation-token student: each head alone, beside their mean (val_top1)
                metrics["val_top1_cls"] = val["top1_cls"]
                metrics["val_top1_dist"] = val["top1_dist"]
            if ema is not None:
                ema_val = evaluate(ema.module, val_batches(), normalize=normalize, device=device)
                metrics["val_top1_ema"] = ema_val["top1"]
            if views_shard is not None and epoch + 1 == cfg.train.epochs:
                # multi-view testing (every view of a video, logits averaged) once, on the final weights
                views = evaluate(
                    model,
                    views_shard.iter_torch_batches(batch_size=max(1, eval_batch_size // num_views), device="cpu"),
                    normalize=normalize,
                    device=device,
                    precision=cfg.train.precision,
                )
                metrics.update(val_mv_top1=views["top1"], val_mv_top5=views["top5"], val_views=num_views)
            history.append(metrics)
            if tracker is not None:
                tracker.log_metrics(metrics, step=epoch + 1)
                if epoch + 1 < last_epoch and time.perf_counter() - curves_drawn > CURVES_EVERY_S:
                    tracker.log_curves(history)  # a live picture in long runs; the final one is drawn by the driver
                    curves_drawn = time.perf_counter()
                tracker.flush()  # a nudge: the sender thread sends now, training goes on
            if tracker is not None:
                run_id = tracker.run_id  # a new run is created by the sender thread: ready long before this
            with tempfile.TemporaryDirectory() as directory:
                ray_checkpoint = None
                if rank == 0:
                    save_training_checkpoint(
                        Path(directory),
                        {
                            "model": unwrap(model).state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "ema": ema.module.state_dict() if ema is not None else None,
                            "epoch": epoch + 1,
                            "global_step": global_step,
                            "world_size": world,
                            "steps_per_epoch": steps_per_epoch,
                            "history": json.dumps(history),
                            "mlflow_run_id": run_id,
                            "classes": classes,
                            "lr_scale": lr_scale,
                        },
                        cfg,
                    )
                    ray_checkpoint = ray.train.Checkpoint.from_directory(directory)
                ray.train.report({**metrics, "mlflow_run_id": run_id or ""}, checkpoint=ray_checkpoint)
            if rank == 0:
                if missing:
                    print(f"{prefix}{missing_rows_warning(epoch + 1, missing, loop_config)}", flush=True)
                print(prefix + format_progress(metrics, cfg.train.epochs), flush=True)
            epoch += 1
            if can_roll_back:
                snapshot.take(
                    model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, epoch=epoch, step=global_step
                )
    except BaseException:
        if tracker is not None:
            tracker.close("FAILED", timeout=min(30.0, cfg.track.flush_timeout_s))
        raise
    if tracker is not None:
        _close_tracker(tracker, cfg.track.flush_timeout_s, prefix)


def _full_batches(batches: Any, batch_size: int, rows: list[int]) -> Any:
    """The full batches of ``batches`` (only the last can be short), every row counted in ``rows[0]``."""
    for batch in batches:
        count = len(batch["label"])
        rows[0] += count
        if count == batch_size:
            yield batch


def missing_rows_warning(epoch: int, missing: dict[str, int], loop_config: dict[str, Any]) -> str:
    """One line: the rows an epoch did not get, per split, out of the rows the split has."""
    counts = ", ".join(f"{short} of {loop_config[f'{split}_count']} {split} rows" for split, short in missing.items())
    return (
        f"warning: epoch {epoch} went without {counts}: a shard file failed to read (Ray Data's error above names "
        "it; skipped within data.max_bad_shards) or rows no longer decode"
    )


def _close_tracker(tracker: Any, timeout: float, prefix: str) -> None:
    """Send the rest (waiting up to ``timeout`` s for an unreachable store) and report tracking's cost."""
    wall = time.perf_counter() - tracker.started
    tracker.log_metrics({"tracking_blocking_s": tracker.blocking_s, "tracking_send_s": tracker.send_s}, step=0)
    fallback = tracker.close(status=None, timeout=timeout)
    print(
        f"{prefix}tracking: {tracker.blocking_s:.3f} s on the training thread ({100 * tracker.blocking_s / wall:.2f}% "
        f"of {wall:.1f} s), {tracker.send_s:.2f} s sending in the background, {tracker.sent_metrics} metrics sent"
        + (f"; the rest is in {fallback}" if fallback else ""),
        flush=True,
    )


def _build_teacher(
    cfg: Config,
    teacher_ref: Any,
    student: torch.nn.Module,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
) -> Teacher:
    """The frozen teacher on this worker's device, from the copy the driver put in the object store.

    It is never DDP-wrapped: each worker scores its own batch. A student with a distillation token gets its
    distilled-training switch turned on here (``distill.heads``), so it returns ``(cls_logits, dist_logits)``.
    """
    import ray

    loaded = ray.get(teacher_ref)
    if use_distillation_token(student, cfg.distill.heads):
        student.set_distilled_training(True)
    bf16 = device.type == "cuda" and cfg.train.precision != "fp32"
    teacher = Teacher(
        loaded.model,
        mean=loaded.mean,
        std=loaded.std,
        student_mean=mean,
        student_std=std,
        dtype=torch.bfloat16 if bf16 else None,
    )
    return teacher.to(device)


def format_progress(metrics: dict[str, float], epochs: int) -> str:
    """The one-line per-epoch progress report."""
    line = (
        f"epoch {int(metrics['epoch'])}/{epochs} | train loss {metrics['train_loss']:.4f} | "
        f"val loss {metrics['val_loss']:.4f} top-1 {metrics['val_top1']:.2f}% top-5 {metrics['val_top5']:.2f}%"
    )
    if "val_top1_cls" in metrics:
        line += f" (cls head {metrics['val_top1_cls']:.2f}%, dist head {metrics['val_top1_dist']:.2f}%)"
    if "val_top1_ema" in metrics:
        line += f" (EMA top-1 {metrics['val_top1_ema']:.2f}%)"
    if "val_mv_top1" in metrics:
        views = int(metrics["val_views"])
        line += f" | {views}-view top-1 {metrics['val_mv_top1']:.2f}% top-5 {metrics['val_mv_top5']:.2f}%"
    return line + f" | {metrics['samples_per_sec']:.0f} samples/s | {metrics['epoch_time_s']:.1f} s"
