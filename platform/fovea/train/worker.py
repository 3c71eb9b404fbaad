"""The function every Ray Train worker runs, as its phases: build (``fovea.train.build``) → restore (this run's
checkpoint, or the one it starts from) → the epoch loop (train, validate, roll back on non-finite steps, checkpoint
and report each epoch) → close the run's tracking."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from fovea.checkpoints import checkpoint_location, load_run_checkpoint, save_checkpoint
from fovea.config import Config
from fovea.console import format_rate
from fovea.data.decode_failures import DecodeFailures, take_failures
from fovea.recipe import model_create_args
from fovea.train.build import TrainingParts, build_parts
from fovea.train.device import (
    RowCount,
    compile_enabled,
    configure_device,
    peak_memory_mb,
    shard_batches,
    sum_across_workers,
    unwrap,
)
from fovea.train.loop import EpochStats, evaluate, train_one_epoch
from fovea.train.per_class import GALLERY_SIZE, ValidationTally, balanced_accuracy, per_class_recall, worst_classes
from fovea.train.plan import WorkerPlan
from fovea.train.progress import step_progress
from fovea.train.rollback import NonFiniteSteps, Rollbacks
from fovea.train.schedule import move_schedule, restore_hyperparameters, scale_learning_rates

CURVES_EVERY_S = 300.0  # rank 0 redraws training_curves.png at most this often (MLflow's UI charts metrics live)


@dataclass(frozen=True)
class Seat:
    """Where this worker sits: its rank, the worker count and its device."""

    rank: int
    world: int
    device: torch.device


@dataclass
class Progress:
    """Where the run stands: epochs done, optimizer steps, the per-epoch metrics so far, and its MLflow run."""

    epoch: int = 0
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None  # the MLflow run this run logs to
    checkpoint_run_id: str | None = None  # the MLflow run the checkpoint it started from logged to
    restored: bool = False  # started from a checkpoint (its own, or the one the plan gave)
    lr_scale: float = 1.0  # rollbacks' factor on the config's learning rates


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: ``loop_config`` is a ``WorkerPlan`` (``WorkerPlan.as_loop_config``)."""
    plan = WorkerPlan.from_loop_config(loop_config)
    cfg = plan.load_config()
    seat = take_seat(cfg, plan)
    teacher = ray.get(plan.teacher) if cfg.distill.type != "none" else None  # the driver's loaded copy
    parts = build_parts(
        cfg,
        classes=list(plan.classes),
        train_count=plan.train_count,
        world=seat.world,
        device=seat.device,
        teacher=teacher,
        registry_uri=plan.registry_uri,
    )
    progress = restore(parts, cfg, plan, seat, ray.train.get_checkpoint())
    parts.model = ray.train.torch.prepare_model(parts.model, move_to_device=False)
    if compile_enabled(cfg.train.compile, seat.device):
        parts.model = torch.compile(parts.model, mode=cfg.train.compile_mode)
    tracker = open_tracker(cfg, plan, progress, seat)
    try:
        EpochLoop(cfg, plan, seat, parts, progress, tracker).run()
    except BaseException:
        if tracker is not None:
            tracker.close("FAILED", timeout=min(30.0, cfg.track.flush_timeout_s))
        raise
    if tracker is not None:
        close_tracker(tracker, cfg.track.flush_timeout_s, plan.progress_prefix)


def take_seat(cfg: Config, plan: WorkerPlan) -> Seat:
    """This worker's rank and device, its threads and seed set (the same initial weights on every worker)."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if world > 1:  # where each worker runs: a multi-node run shows its spread here
        node = ray.get_runtime_context().get_node_id()
        print(f"{plan.progress_prefix}worker {rank}/{world} on node {node}", flush=True)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(cfg.train.seed)  # same init everywhere (DDP also broadcasts rank 0's weights)
    device = ray.train.torch.get_device()
    configure_device(device)
    return Seat(rank=rank, world=world, device=device)


# --- restore ---------------------------------------------------------------------------------------------------------


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


def restore(
    parts: TrainingParts, cfg: Config, plan: WorkerPlan, seat: Seat, own: ray.train.Checkpoint | None
) -> Progress:
    """Load the run's own checkpoint (``own``, as Ray hands it on resume) or else the plan's initial one into
    ``parts``: where the run stands. A run with neither starts at epoch 0."""
    checkpoint = own
    if checkpoint is None and plan.initial_checkpoint:  # this run's own checkpoints come first
        checkpoint = ray.train.Checkpoint.from_directory(plan.initial_checkpoint)
    if checkpoint is None:
        return Progress()
    state = restore_state(checkpoint, fallback=own is not None, verbose=seat.rank == 0)
    optimizer, scheduler = parts.optimizer, parts.scheduler
    parts.model.load_state_dict(state["model"])
    fresh_groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    # A checkpoint from another trial (PBT's exploit) carries that trial's hyperparameters: keep this run's.
    restore_hyperparameters(optimizer, scheduler, fresh_groups)
    lr_scale = 1.0
    if own is not None and state.get("lr_scale", 1.0) != 1.0:  # rollbacks lowered this run's learning rate
        lr_scale = state["lr_scale"]
        scale_learning_rates(optimizer, scheduler, lr_scale)
    if parts.ema is not None and state.get("ema") is not None:
        parts.ema.module.load_state_dict(state["ema"])
    saved_world = state.get("world_size", seat.world)
    if saved_world != seat.world:  # elastic: another worker count, so another number of steps per epoch
        saved_steps = state.get("steps_per_epoch") or parts.steps_per_epoch
        move_schedule(optimizer, scheduler, round(scheduler.last_epoch * parts.steps_per_epoch / saved_steps))
    progress = Progress(
        epoch=state["epoch"],
        global_step=state["global_step"],
        history=json.loads(state["history"]),
        run_id=state.get("mlflow_run_id"),
        checkpoint_run_id=state.get("mlflow_run_id"),
        restored=True,
        lr_scale=lr_scale,
    )
    if seat.rank == 0:
        resized = f" with {seat.world} workers (was {saved_world})" if saved_world != seat.world else ""
        print(f"resuming {plan.run_name} from its checkpoint: epoch {progress.epoch + 1}{resized}", flush=True)
    return progress


# --- tracking ----------------------------------------------------------------------------------------------------


def open_tracker(cfg: Config, plan: WorkerPlan, progress: Progress, seat: Seat) -> Any:
    """Rank 0's ``RunLogger`` (None on other ranks and with tracking off). It logs into the plan's run (a sweep's
    trial), else the checkpoint's run, else a new one; ``progress.run_id`` becomes that run."""
    progress.run_id = plan.run_id or progress.run_id
    if seat.rank != 0 or not plan.tracking_uri:
        return None
    from fovea.track import RunLogger

    tracker = RunLogger(
        plan.tracking_uri,
        run_id=progress.run_id,
        experiment_id=plan.experiment_id,
        run_name=plan.run_name,
        params=cfg.flat(),
        tags=dict(plan.run_tags),
        flush_interval_s=cfg.track.flush_interval_s,
        # the epochs this run's checkpoint has: any a lost worker never sent go to the store (not those of another
        # trial's checkpoint, as in PBT's exploit)
        backfill=progress.history if progress.run_id and progress.run_id == progress.checkpoint_run_id else (),
    )
    if not progress.restored or plan.run_id:
        tracker.log_dict(cfg.redacted(), "config.yaml")
    return tracker


def close_tracker(tracker: Any, timeout: float, prefix: str) -> None:
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


# --- the epoch loop ------------------------------------------------------------------------------------------------


class EpochLoop:
    """The epochs of one worker: train, validate, roll back or stop on non-finite steps, checkpoint and report."""

    def __init__(
        self,
        cfg: Config,
        plan: WorkerPlan,
        seat: Seat,
        parts: TrainingParts,
        progress: Progress,
        tracker: Any,
    ) -> None:
        self.cfg, self.plan, self.seat, self.parts, self.progress, self.tracker = (
            cfg,
            plan,
            seat,
            parts,
            progress,
            tracker,
        )
        self.rollbacks = Rollbacks(cfg.train, lr_scale=progress.lr_scale)
        self.train_shard = ray.train.get_dataset_shard("train")
        self.val_shard = ray.train.get_dataset_shard("val")
        self.views_shard = ray.train.get_dataset_shard("val_views") if plan.multi_view else None
        self.curves_drawn = time.perf_counter()
        # the last validation's per-class results: confusion counts (all workers) and rank 0's misclassified samples
        self.confusion: torch.Tensor | None = None
        self.gallery: dict[str, Any] | None = None
        self.recall_keys: list[str] = []
        if tracker is not None:
            from fovea.track import class_metric_keys

            self.recall_keys = class_metric_keys("val_recall/", list(plan.classes))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=step)

    def say(self, line: str) -> None:
        """A progress line from rank 0."""
        if self.seat.rank == 0:
            print(self.plan.progress_prefix + line, flush=True)

    def batches(self, shard: Any, *, batch_size: int, count: RowCount | None = None, **options: Any) -> Any:
        data = self.cfg.data
        return shard_batches(
            shard,
            batch_size=batch_size,
            device=self.seat.device,
            prefetch_batches=data.prefetch_batches,
            jpeg_decode=data.jpeg_decode,
            img_size=self.cfg.model.img_size,
            count=count,
            video_decode=dict(num_frames=data.num_frames, decode_threads=data.decode_threads)
            if data.video_decode == "device"
            else None,
            **options,
        )

    def validate(
        self, model: torch.nn.Module, precision: str, tally: ValidationTally | None = None
    ) -> dict[str, float]:
        batches = self.batches(self.val_shard, batch_size=self.cfg.eval_batch_size)
        device = self.seat.device
        return evaluate(
            model, batches, normalize=self.parts.normalize, device=device, precision=precision, on_batch=tally
        )

    def run(self) -> None:
        cfg, progress, parts = self.cfg, self.progress, self.parts
        if parts.teacher is not None and not progress.restored:
            self.score_teacher()
        last_epoch = self.plan.last_epoch(cfg.train.epochs)
        self.rollbacks.take(parts, epoch=progress.epoch, step=progress.global_step)
        while progress.epoch < last_epoch:
            count = RowCount()
            try:
                stats = self.train_epoch(count)
            except NonFiniteSteps as fault:
                epoch, step, warning = self.rollbacks.recover(fault, parts, epoch=progress.epoch, log=self.log)
                progress.epoch, progress.global_step = epoch, step
                del progress.history[epoch:]  # the epochs trained again
                self.say(warning)
                continue
            progress.global_step += stats.steps
            metrics, missing = self.epoch_metrics(stats, count)
            self.report(metrics, missing, last_epoch)
            progress.epoch += 1
            self.rollbacks.take(parts, epoch=progress.epoch, step=progress.global_step)

    def score_teacher(self) -> None:
        """The teacher's own score on this val split: a student can hardly beat a teacher that cannot classify."""
        cfg = self.cfg
        teacher_val = self.validate(self.parts.teacher, "fp32")
        self.log({"teacher_val_top1": teacher_val["top1"], "teacher_val_top5": teacher_val["top5"]}, 0)
        if self.seat.rank == 0:
            print(
                f"teacher {self.plan.teacher_source or ''}: val top-1 {teacher_val['top1']:.2f}% "
                f"top-5 {teacher_val['top5']:.2f}% | {cfg.distill.type} distillation, alpha {cfg.distill.alpha}, "
                f"tau {cfg.distill.tau}",
                flush=True,
            )

    def train_epoch(self, count: RowCount) -> EpochStats:
        cfg, parts = self.cfg, self.parts
        batches = self.batches(
            self.train_shard,
            batch_size=cfg.data.batch_size,
            count=count,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        )

        def on_step(step: int, loss: float, lr: float) -> None:  # every track.log_every_steps steps
            self.log({"step/train_loss": loss, "step/lr": lr}, step)

        return train_one_epoch(
            parts.model,
            batches,
            optimizer=parts.optimizer,
            scheduler=parts.scheduler,
            criterion=parts.criterion,
            normalize=parts.normalize,
            device=self.seat.device,
            precision=cfg.train.precision,
            accum_steps=cfg.optim.accum_steps,
            grad_clip=cfg.optim.grad_clip,
            mixup=parts.mixup,
            ema=parts.ema,
            on_step=on_step,
            log_every=cfg.track.log_every_steps,
            start_step=self.progress.global_step,
            teacher=parts.teacher,
            patience=cfg.train.nonfinite_patience,
            hooks=parts.hooks,
            progress=step_progress(
                rank=self.seat.rank,
                every_s=self.plan.step_progress_s,
                world=self.seat.world,
                epoch=self.progress.epoch + 1,
                epochs=cfg.train.epochs,
                steps=parts.steps_per_epoch,
                prefix=self.plan.progress_prefix,
            ),
        )

    def epoch_metrics(self, stats: EpochStats, count: RowCount) -> tuple[dict[str, float], dict[str, int]]:
        """The epoch's metrics over all workers, and the rows each split did not deliver (``{split: rows}``)."""
        cfg, parts, world = self.cfg, self.parts, self.seat.world
        gallery = GALLERY_SIZE if self.seat.rank == 0 else 0
        tally = ValidationTally(len(self.plan.classes), self.seat.device, gallery=gallery)
        val = self.validate(parts.model, cfg.train.precision, tally)
        self.confusion, self.gallery = tally.confusion(), tally.gallery.state()  # every worker sums the counts
        applied = stats.steps - stats.skipped_batches
        loss_sum, applied_sum, samples, seconds_sum, skipped, train_rows = sum_across_workers(
            [stats.loss * applied, float(applied), float(stats.samples), stats.seconds, float(stats.skipped_batches)]
            + [float(count.rows)],
            self.seat.device,
        )
        # rows a shard that failed to read took with it (Ray Data skipped it within data.max_bad_shards), or that
        # no longer decode; each worker's share is evened out by dropping at most world - 1 rows: not counted
        missing = {
            split: short
            for split, expected, got in (
                ("train", self.plan.train_count, train_rows),
                ("val", self.plan.val_count, val["count"]),
            )
            if (short := int(expected - got)) >= world
        }
        metrics = {
            "epoch": self.progress.epoch + 1,
            "train_loss": loss_sum / max(1.0, applied_sum),
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "val_balanced_acc": balanced_accuracy(self.confusion),
            "train_samples": samples,
            "val_samples": val["count"],
            "samples_per_sec": samples / max(1e-9, seconds_sum / world),
            "epoch_time_s": stats.seconds,
            "lr": parts.optimizer.param_groups[0]["lr"],
            "skipped_steps": skipped,
            "train_rows": train_rows,
            "data_missing_rows": sum(missing.values()),
            "workers": world,  # changes in an elastic run
            "peak_memory_mb": peak_memory_mb(self.seat.device),  # rank 0's: GPU memory allocated, or the RSS
        }
        if "top1_cls" in val:  # a distillation-token student: each head alone, beside their mean (val_top1)
            metrics["val_top1_cls"] = val["top1_cls"]
            metrics["val_top1_dist"] = val["top1_dist"]
        if parts.ema is not None:
            metrics["val_top1_ema"] = self.validate(parts.ema.module, "auto")["top1"]
        if self.views_shard is not None and self.progress.epoch + 1 == cfg.train.epochs:
            metrics.update(self.multi_view_metrics())
        return metrics, missing

    def multi_view_metrics(self) -> dict[str, float]:
        """Multi-view testing (every view of a video, logits averaged) once, on the final weights."""
        cfg, num_views = self.cfg, self.cfg.num_views
        views = evaluate(
            self.parts.model,
            self.views_shard.iter_torch_batches(batch_size=max(1, cfg.eval_batch_size // num_views), device="cpu"),
            normalize=self.parts.normalize,
            device=self.seat.device,
            precision=cfg.train.precision,
        )
        return {"val_mv_top1": views["top1"], "val_mv_top5": views["top5"], "val_views": num_views}

    def report(self, metrics: dict[str, float], missing: dict[str, int], last_epoch: int) -> None:
        """Record the epoch: MLflow (rank 0), a checkpoint with ``ray.train.report``, the progress line."""
        progress, tracker = self.progress, self.tracker
        progress.history.append(metrics)
        epoch = progress.epoch + 1
        if tracker is not None:
            tracker.log_metrics(metrics, step=epoch)
            self.log_recalls(epoch)
            if epoch < last_epoch and time.perf_counter() - self.curves_drawn > CURVES_EVERY_S:
                tracker.log_curves(progress.history)  # a live picture in long runs; the driver draws the final one
                self.curves_drawn = time.perf_counter()
            tracker.flush()  # a nudge: the sender thread sends now, training goes on
            progress.run_id = tracker.run_id  # a new run is created by the sender thread: ready long before this
        with tempfile.TemporaryDirectory() as directory:
            ray_checkpoint = None
            if self.seat.rank == 0:
                save_training_checkpoint(Path(directory), self.checkpoint_state(), self.cfg)
                ray_checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({**metrics, "mlflow_run_id": progress.run_id or ""}, checkpoint=ray_checkpoint)
        failures = take_failures() if self.seat.rank == 0 else None  # each epoch: the decode tally starts again
        if missing:
            self.say(missing_rows_warning(epoch, missing, self.plan, failures))
        worst = worst_classes(self.confusion, list(self.plan.classes)) if self.confusion is not None else []
        self.say(format_progress(metrics, self.cfg.train.epochs, worst))

    def log_recalls(self, epoch: int) -> None:
        """Each class's recall (``val_recall/<class>``, the class name made a safe metric key), rank 0."""
        if self.tracker is None or self.confusion is None:
            return
        recalls = zip(self.recall_keys, per_class_recall(self.confusion), strict=True)
        self.tracker.log_metrics({key: recall for key, recall in recalls if recall == recall}, step=epoch)  # no NaN

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds after the current epoch (``create_args``: the architecture, so that no reader
        derives it again)."""
        parts, progress, classes = self.parts, self.progress, list(self.plan.classes)
        return {
            "model": unwrap(parts.model).state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "ema": parts.ema.module.state_dict() if parts.ema is not None else None,
            "epoch": progress.epoch + 1,
            "global_step": progress.global_step,
            "world_size": self.seat.world,
            "steps_per_epoch": parts.steps_per_epoch,
            "history": json.dumps(progress.history),
            "mlflow_run_id": progress.run_id,
            "classes": classes,
            "create_args": model_create_args(self.cfg, num_classes=len(classes)),
            # what the inputs were normalised with: the start weights' own statistics, when they brought them
            "normalization": {
                "mean": (parts.normalize.mean / 255.0).tolist(),
                "std": (parts.normalize.std / 255.0).tolist(),
            },
            "lr_scale": self.rollbacks.lr_scale,
            # the epoch's validation: confusion counts (rows true, columns predicted) and misclassified samples
            "val_confusion": self.confusion.to(torch.int32) if self.confusion is not None else None,
            "val_gallery": self.gallery,
        }


def missing_rows_warning(
    epoch: int, missing: dict[str, int], plan: WorkerPlan, failures: DecodeFailures | None = None
) -> str:
    """One line: the rows an epoch did not get, per split, out of the rows the split has, and why.

    Args:
        failures: the rows the decode steps dropped this epoch (``fovea.data.decode_failures.take_failures``);
            None when there was no tally to ask, and the line can only name both possible causes.
    """
    total = {"train": plan.train_count, "val": plan.val_count}
    counts = ", ".join(f"{short} of {total[split]} {split} rows" for split, short in missing.items())
    shards = "a shard file failed to read (Ray Data's error above names it; skipped within data.max_bad_shards)"
    if failures is None:
        why = f"{shards} or rows no longer decode"
    elif failures.rows:  # (more of them than rows missing: another run sharing the Ray job counted too)
        lost = sum(missing.values())
        why = failures.describe()
        if failures.rows < lost:
            why += f"; the other {lost - failures.rows}: {shards}"
    else:
        why = shards
    return f"warning: epoch {epoch} went without {counts}: {why}"


def format_progress(metrics: dict[str, float], epochs: int, worst: list[tuple[str, float]] | None = None) -> str:
    """The one-line per-epoch progress report; ``worst``: the classes of lowest recall, ``[(name, recall %)]``."""
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
    if "val_balanced_acc" in metrics:
        line += f" | balanced {metrics['val_balanced_acc']:.2f}%"
        worst = [(name, recall) for name, recall in worst or () if recall < 100.0]
        if worst:
            line += ", lowest " + ", ".join(f"{name[:24]} {recall:.1f}%" for name, recall in worst)
    return line + f" | {format_rate(metrics['samples_per_sec'])} samples/s | {metrics['epoch_time_s']:.1f} s"
