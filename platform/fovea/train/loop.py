"""Plain PyTorch training and evaluation steps: no Ray, no MLflow.

Batches arrive as ``{"image": uint8 (B, 3, H, W), "label": int64 (B,)}`` (images) or ``{"video": uint8
(B, 3, T, H, W), ...}`` (clips) on the CPU; everything from the conversion to float onwards (normalisation,
mixup/cutmix, autocast) happens on the training device. Multi-view evaluation batches hold every view of each
video, ``(B, V, 3, T, H, W)``; a video's score is the mean of its views' logits.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from fovea.distill import has_distillation_token, head_logits


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under torch.compile and DDP wrappers (what state dicts and EMA should see)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


class Normalize(nn.Module):
    """uint8 images ``(B, C, H, W)`` or clips ``(B, C, T, H, W)`` to normalised float: ``(x / 255 - mean) / std``."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        # (C,), pre-scaled by 255 so the uint8 input needs a single subtract and divide
        self.register_buffer("mean", torch.tensor(mean) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std) * 255.0, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (images.dim() - 2)  # channels on dim 1, broadcast over T, H, W
        return (images.float() - self.mean.view(shape)) / self.std.view(shape)


def batch_inputs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model input of a batch: its ``image`` or ``video`` tensor."""
    return batch["image"] if "image" in batch else batch["video"]


def apply_mixup(mixup: Mixup, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's mixup/cutmix on images, or on clips with one box and one lambda for all of a clip's frames."""
    if inputs.dim() == 4:
        return mixup(inputs, targets)
    # (B, C, T, H, W) -> (B, C*T, H, W): cutmix cuts the same box out of every frame, mixup mixes whole clips
    batch, channels, frames, height, width = inputs.shape
    mixed, targets = mixup(inputs.reshape(batch, channels * frames, height, width), targets)
    return mixed.view(batch, channels, frames, height, width), targets


def normalization(model: nn.Module, data_cfg: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean and std: ``data.mean``/``data.std`` when set, else the model's own (ImageNet's by default)."""
    from fovea.models import model_statistics

    model_mean, model_std = model_statistics(model)
    return tuple(data_cfg.mean or model_mean), tuple(data_cfg.std or model_std)


def build_optimizer(model: nn.Module, optim_cfg: Any, *, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW (or any timm optimizer) with no weight decay on norms, biases, position embeddings and tokens.

    timm's ``create_optimizer_v2`` already leaves out 1-D parameters and the names in ``model.no_weight_decay()``,
    and builds layer-wise decay groups when ``layer_decay`` is set. Each group's ``lr`` is pre-multiplied by its
    ``lr_scale`` so a plain ``LambdaLR`` schedule keeps the per-layer ratios.
    """
    kwargs: dict[str, Any] = {"betas": tuple(optim_cfg.betas), "eps": optim_cfg.eps} if "adam" in optim_cfg.name else {}
    if fused:
        kwargs["fused"] = True
    optimizer = create_optimizer_v2(
        model,
        opt=optim_cfg.name,
        lr=optim_cfg.lr,
        weight_decay=optim_cfg.weight_decay,
        layer_decay=optim_cfg.layer_decay,
        **kwargs,
    )
    for group in optimizer.param_groups:
        group["lr"] = optim_cfg.lr * group.get("lr_scale", 1.0)
    return optimizer


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    kind: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Per-step linear warmup, then cosine decay to ``min_lr_ratio`` x peak (or constant)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def move_schedule(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, step: int) -> None:
    """Put a per-step schedule at ``step`` and set the learning rates it gives there.

    Used when a run resumes with another worker count (elastic training): the per-worker batch stays, so an epoch
    has another number of steps, and the saved step count must be carried over to the same fraction of the run.
    """
    scheduler.last_epoch = step
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def restore_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, fresh: list[dict[str, Any]]) -> None:
    """Put this run's hyperparameters back after loading optimizer and scheduler state saved under others.

    ``load_state_dict`` brings back the saved peak learning rates, weight decay and betas along with the step count
    and moments. When the checkpoint came from another trial (PBT copies the best trials' weights into the worst
    and perturbs their hyperparameters), the new values must win: the moments and the schedule's position stay.

    Args:
        fresh: the optimizer's param groups (without ``params``) as built from this run's config, before loading.
    """
    for group, new in zip(optimizer.param_groups, fresh, strict=True):
        for key in ("weight_decay", "betas", "eps", "initial_lr"):
            if key in new:
                group[key] = new[key]
    scheduler.base_lrs = [new["initial_lr"] for new in fresh]
    move_schedule(optimizer, scheduler, scheduler.last_epoch)


def build_mixup(data_cfg: Any, *, num_classes: int, label_smoothing: float) -> Mixup | None:
    """timm's batch mixup/cutmix (on whatever device the batch is on), or None when both are off."""
    if data_cfg.mixup <= 0 and data_cfg.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=data_cfg.mixup,
        cutmix_alpha=data_cfg.cutmix,
        prob=data_cfg.mixup_prob,
        switch_prob=data_cfg.mixup_switch_prob,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


def build_criterion(*, mixup: Mixup | None, label_smoothing: float) -> nn.Module:
    """Soft-target CE under mixup (its targets already carry the smoothing), else CE with label smoothing."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


FUSED_OPTIMIZERS = ("adam", "adamw")  # timm names that build torch's Adam/AdamW, which have fused kernels


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """``train.compile``: ``auto`` compiles on a GPU only (on a CPU compiling takes longer than it saves)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def configure_device(device: torch.device) -> None:
    """Fast GPU defaults: TF32 for the float32 matmuls and convolutions left outside bf16 autocast."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """``train.grad_checkpointing=true``: turn on the model's activation checkpointing, or fail in one line."""
    if not hasattr(model, "set_grad_checkpointing"):
        raise ValueError(f"train.grad_checkpointing: {name} has no activation checkpointing")
    model.set_grad_checkpointing(True)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: allocated GPU memory on CUDA, else the process's peak RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 under ``auto`` on GPU, nothing on CPU (bf16 matmuls are slower than fp32 on most CPUs)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@dataclass
class EpochStats:
    loss: float
    samples: int
    steps: int
    seconds: float
    skipped_batches: int = 0
    longest_skip_run: int = 0


def _micro_batches(batches: Iterable[dict[str, torch.Tensor]], accum_steps: int) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    for batch in batches:
        group.append(batch)
        if len(group) == accum_steps:
            yield group
            group = []
    # a trailing partial group is dropped, like drop_last, so every optimizer step sees the same batch count


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer can skip a step on the device (fused Adam/AdamW read ``optimizer.found_inf``).

    Then a step with a non-finite loss or gradient is dropped without the host waiting for the GPU: the training
    loop never synchronises, and the next batches are queued while this one computes.
    """
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False) and optimizer.defaults.get("fused"))


def prefetch_to_device(
    batches: Iterable[dict[str, torch.Tensor]], device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Copy each batch to a CUDA device one batch ahead, on a side stream, so the GPU never waits for a copy.

    The batches should come from pinned host memory (``iter_torch_batches(pin_memory=True)``) for the copies to
    be asynchronous. On any other device the batches pass through as they are.
    """
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)

    def copy(batch: dict[str, Any]) -> dict[str, Any]:
        with torch.cuda.stream(stream):
            return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    iterator = iter(batches)
    ahead = next(iterator, None)
    ahead = copy(ahead) if ahead is not None else None
    while ahead is not None:
        torch.cuda.current_stream(device).wait_stream(stream)
        current = ahead
        for value in current.values():
            if torch.is_tensor(value):
                value.record_stream(torch.cuda.current_stream(device))  # the side stream may not reuse it early
        following = next(iterator, None)
        ahead = copy(following) if following is not None else None
        yield current


class NonFiniteSteps(RuntimeError):
    """``train.nonfinite_patience`` optimizer steps in a row had a non-finite loss or gradient."""

    def __init__(self, step: int, run: int) -> None:
        super().__init__(f"{run} steps in a row with a non-finite loss or gradient, up to step {step}")
        self.step, self.run = step, run


class NonFiniteTraining(RuntimeError):
    """The run stopped on non-finite steps (``train.nonfinite_action=stop``, or rollbacks used up); one line."""


class NanAtSteps(nn.Module):
    """Fault injection: the wrapped loss becomes NaN at the given global optimizer steps (1-based; accumulation's
    micro-batches share their step's number), once each, like a transient spike: a step trained again after a
    rollback is clean. ``step`` is set by the training loop before each step."""

    def __init__(self, criterion: nn.Module, steps: Iterable[int]) -> None:
        super().__init__()
        self.criterion, self.pending, self.step, self.fired = criterion, set(steps), 0, 0

    def forward(self, *args: Any) -> torch.Tensor:
        loss = self.criterion(*args)
        if self.step in self.pending:
            return loss * float("nan")
        return loss

    def step_done(self) -> None:
        """Called after each optimizer step: that step's fault, if any, has fired."""
        if self.step in self.pending:
            self.pending.discard(self.step)
            self.fired += 1


def _cpu_copy(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu_copy(item) for item in value)
    return value


class TrainingSnapshot:
    """The last good training state (weights, optimizer moments, schedule, EMA) in host memory: what a rollback
    after a run of non-finite steps returns to. Taken after every epoch that ended well."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def take(self, *, model: nn.Module, optimizer: Any, scheduler: LambdaLR, ema: Any, epoch: int, step: int) -> None:
        self.state = {
            "model": _cpu_copy(unwrap(model).state_dict()),
            "optimizer": _cpu_copy(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "ema": _cpu_copy(ema.module.state_dict()) if ema is not None else None,
            "epoch": epoch,
            "step": step,
        }

    def restore(
        self, *, model: nn.Module, optimizer: Any, scheduler: LambdaLR, ema: Any, lr_factor: float
    ) -> tuple[int, int]:
        """Load the snapshot and multiply the learning rates (the whole schedule) by ``lr_factor``.

        Returns:
            ``(epoch, global_step)`` of the snapshot: where training goes on.
        """
        if self.state is None:
            raise RuntimeError("no training state to roll back to")
        unwrap(model).load_state_dict(self.state["model"])
        optimizer.load_state_dict(self.state["optimizer"])
        scheduler.load_state_dict(self.state["scheduler"])
        if ema is not None and self.state["ema"] is not None:
            ema.module.load_state_dict(self.state["ema"])
        scale_learning_rates(optimizer, scheduler, lr_factor)
        return self.state["epoch"], self.state["step"]


def scale_learning_rates(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, factor: float) -> None:
    """Multiply the schedule's peak learning rates (and so every later one) by ``factor``, keeping its position."""
    scheduler.base_lrs = [base * factor for base in scheduler.base_lrs]
    for group in optimizer.param_groups:
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    move_schedule(optimizer, scheduler, scheduler.last_epoch)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR | None,
    criterion: nn.Module,
    normalize: Normalize,
    device: torch.device,
    precision: str = "auto",
    accum_steps: int = 1,
    grad_clip: float = 0.0,
    mixup: Mixup | None = None,
    ema: Any | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    log_every: int = 1,
    start_step: int = 0,
    teacher: nn.Module | None = None,
    patience: int = 0,
) -> EpochStats:
    """One pass over ``batches``; returns the mean loss and throughput of this process.

    A step whose loss or gradient is not finite is skipped (the weights and optimizer moments stay as they were)
    and counted; the learning-rate schedule still moves on. With a fused Adam/AdamW the skip happens on the device
    (``optimizer.found_inf``), and the host reads the loss only every ``log_every`` steps and at the end of the
    epoch, so it can run ahead of the GPU; other optimizers check each step on the host.

    Args:
        model: the (possibly DDP-wrapped) model, in train mode on return.
        batches: uint8 image batches with labels (on the CPU or already on ``device``).
        optimizer: the optimizer; one step per ``accum_steps`` batches.
        scheduler: stepped after every optimizer step.
        criterion: loss on (logits, targets).
        normalize: uint8 -> normalised float on the device.
        device: training device.
        precision: ``auto``/``bf16``/``fp32``.
        accum_steps: micro-batches per optimizer step (DDP gradient sync only on the last).
        grad_clip: max gradient norm (0 = off).
        mixup: batch mixup/cutmix, or None.
        ema: a timm ``ModelEmaV3`` updated after each optimizer step, or None.
        on_step: called as ``on_step(global_step, loss, lr)`` after every ``log_every``-th optimizer step.
        log_every: how often ``on_step`` is called (each call waits for the device to catch up).
        start_step: the global optimizer step count before this epoch.
        teacher: a frozen teacher; when given, ``criterion`` is called as ``criterion(outputs, targets,
            teacher(images))`` on the same (mixed) images the student sees.
        patience: raise :class:`NonFiniteSteps` once this many steps in a row were skipped (0 = never). It is
            checked every ``log_every`` steps and at the end, so it is seen at most ``log_every`` steps late.

    Raises:
        NonFiniteSteps: ``patience`` non-finite steps in a row.
    """
    model.train()
    dtype = autocast_dtype(precision, device)
    on_device = skips_on_device(optimizer)
    zero = torch.zeros((), device=device)
    # running sums kept on the device: loss of applied steps, applied steps, skipped steps, current and longest
    # run of consecutive skipped steps
    loss_sum, applied, skipped, run, longest = (zero.clone() for _ in range(5))
    step, samples = start_step, 0
    start = time.perf_counter()
    for group in _micro_batches(batches, accum_steps):
        optimizer.zero_grad(set_to_none=True)
        if isinstance(criterion, NanAtSteps):
            criterion.step = step + 1
        group_loss = zero
        for index, batch in enumerate(group):
            images = normalize(batch_inputs(batch).to(device, non_blocking=True))
            targets = batch["label"].to(device, non_blocking=True)
            if mixup is not None:
                if images.shape[0] % 2:  # timm's Mixup pairs samples by flipping the batch: it needs an even size
                    images, targets = images[:-1], targets[:-1]
                images, targets = apply_mixup(mixup, images, targets)
            last = index == len(group) - 1
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
            with sync, torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                if teacher is None:
                    loss = criterion(model(images), targets)
                else:
                    loss = criterion(model(images), targets, teacher(images))
                (loss / len(group)).backward()
            group_loss = group_loss + loss.detach().float() / len(group)
            samples += images.shape[0]
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = nn.utils.get_total_norm(grads) if grads else zero
        bad = ~(torch.isfinite(group_loss) & torch.isfinite(norm))  # a non-finite step would poison the weights
        if grad_clip > 0:
            nn.utils.clip_grads_with_norm_(model.parameters(), grad_clip, norm)
        if isinstance(criterion, NanAtSteps):
            criterion.step_done()
        if on_device:
            optimizer.found_inf = bad.float()  # the fused kernel leaves weights, moments and step count alone
            optimizer.step()
        elif not bad.item():
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        step += 1
        if ema is not None:
            ema.update(unwrap(model), step=step)
        loss_sum += torch.where(bad, zero, group_loss)
        applied += (~bad).float()
        skipped += bad.float()
        run = (run + 1) * bad.float()
        longest = torch.maximum(longest, run)
        if step % log_every == 0 and (on_step is not None or patience):
            step_loss, longest_run = torch.stack([group_loss, longest]).tolist()  # waits for the device
            if patience and longest_run >= patience:
                optimizer.found_inf = None
                raise NonFiniteSteps(step, int(longest_run))
            if on_step is not None:
                on_step(step, step_loss, optimizer.param_groups[0]["lr"])
    optimizer.found_inf = None
    loss_total, applied_steps, skipped_steps, longest_run = torch.stack([loss_sum, applied, skipped, longest]).tolist()
    if patience and longest_run >= patience:
        raise NonFiniteSteps(step, int(longest_run))
    return EpochStats(
        loss=loss_total / max(1.0, applied_steps),
        samples=samples,
        steps=step - start_step,
        seconds=time.perf_counter() - start,
        skipped_batches=int(skipped_steps),
        longest_skip_run=int(longest_run),
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    normalize: Normalize,
    device: torch.device,
    precision: str = "auto",
) -> dict[str, float]:
    """Loss and top-1/top-5 accuracy (in percent) over ``batches``, summed over all DDP processes.

    A student with a distillation token is scored on the mean of its two heads, as it predicts; the top-1 of
    each head alone is reported too, as ``top1_cls`` and ``top1_dist``. Multi-view video batches
    ``(B, V, 3, T, H, W)`` are scored per video on the mean of its ``V`` views' logits.
    """
    model.eval()
    bare = unwrap(model)
    dtype = autocast_dtype(precision, device)
    # loss sum, top-1 hits, top-5 hits, count, class-head top-1 hits, distillation-head top-1 hits
    totals = torch.zeros(6, dtype=torch.float64, device=device)
    for batch in batches:
        inputs = batch_inputs(batch).to(device, non_blocking=True)
        num_views = inputs.shape[1] if inputs.dim() == 6 else 1
        if inputs.dim() == 6:
            inputs = inputs.flatten(0, 1)  # (B, V, 3, T, H, W) -> (B*V, 3, T, H, W): views are just more clips
        images = normalize(inputs)
        targets = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            heads = head_logits(bare, images)
            logits = model(images) if heads is None else (heads[0] + heads[1]) / 2
            if heads is not None:
                heads = tuple(head.float().unflatten(0, (-1, num_views)).mean(1) for head in heads)
        logits = logits.float().unflatten(0, (-1, num_views)).mean(1)  # (B, classes): each video's mean logits
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices  # (B, k)
        hits = top.eq(targets[:, None])
        head_hits = [torch.zeros((), dtype=torch.float64, device=device)] * 2
        if heads is not None:
            head_hits = [(head.float().argmax(dim=1) == targets).sum().double() for head in heads]
        totals += torch.stack(
            [
                nn.functional.cross_entropy(logits, targets, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                torch.tensor(targets.shape[0], dtype=torch.float64, device=device),
                *head_hits,
            ]
        )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    loss, top1, top5, count, top1_cls, top1_dist = totals.tolist()
    count = max(count, 1.0)
    result = {"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "count": count}
    if has_distillation_token(bare):
        result["top1_cls"] = 100.0 * top1_cls / count
        result["top1_dist"] = 100.0 * top1_dist / count
    return result
