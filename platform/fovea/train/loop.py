"""Plain PyTorch training and evaluation steps: no Ray, no MLflow.

Batches arrive as ``{"image": uint8 (B, 3, H, W), "label": int64 (B,)}`` (images) or ``{"video": uint8
(B, 3, T, H, W), ...}`` (clips) on the CPU; everything from the conversion to float onwards (normalisation,
mixup/cutmix, autocast) happens on the training device. Multi-view evaluation batches hold every view of each
video, ``(B, V, 3, T, H, W)``; a video's score is the mean of its views' logits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.data import Mixup
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from fovea.distill import has_distillation_token
from fovea.evaluate.scoring import view_mean_logits
from fovea.train.device import autocast_dtype, skips_on_device, unwrap
from fovea.train.faults import StepHook
from fovea.train.progress import StepProgress
from fovea.train.rollback import NonFiniteSteps


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


@dataclass
class EpochStats:
    loss: float
    samples: int
    steps: int
    seconds: float
    skipped_batches: int = 0
    longest_skip_run: int = 0


def micro_batches(batches: Iterable[dict[str, torch.Tensor]], accum_steps: int) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    for batch in batches:
        group.append(batch)
        if len(group) == accum_steps:
            yield group
            group = []
    # a trailing partial group is dropped, like drop_last, so every optimizer step sees the same batch count


def accumulate_gradients(
    model: nn.Module,
    group: list[dict[str, torch.Tensor]],
    *,
    criterion: nn.Module,
    normalize: Normalize,
    device: torch.device,
    dtype: torch.dtype | None,
    mixup: Mixup | None,
    teacher: nn.Module | None,
) -> tuple[torch.Tensor, int]:
    """Forward and backward over one optimizer step's micro-batches (DDP syncs gradients on the last only).

    Returns:
        ``(loss, samples)``: the step's mean loss (a device tensor: nothing waits for the device) and its samples.
    """
    group_loss = torch.zeros((), device=device)
    samples = 0
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
    return group_loss, samples


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
    hooks: Sequence[StepHook] = (),
    progress: StepProgress | None = None,
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
        normalize, device: uint8 -> normalised float on ``device``, the training device.
        precision: ``auto``/``bf16``/``fp32``.
        accum_steps, grad_clip: micro-batches per optimizer step (DDP syncs on the last); max gradient norm (0: off).
        mixup, ema: batch mixup/cutmix; a timm ``ModelEmaV3`` updated after each optimizer step (either may be None).
        on_step: called as ``on_step(global_step, loss, lr)`` after every ``log_every``-th optimizer step.
        log_every: how often ``on_step`` is called (each call waits for the device to catch up).
        start_step: the global optimizer step count before this epoch.
        teacher: a frozen teacher; when given, ``criterion`` is called as ``criterion(outputs, targets,
            teacher(images))`` on the same (mixed) images the student sees.
        patience: raise :class:`NonFiniteSteps` once this many steps in a row were skipped (0 = never). It is
            checked every ``log_every`` steps and at the end, so it is seen at most ``log_every`` steps late.
        hooks: called as ``hook.before_step(step)`` and ``hook.after_step(step)`` around each optimizer step
            (``fovea.train.faults``).
        progress: told of each optimizer step; reads the loss from the device only when it prints (now and then).

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
    for group in micro_batches(batches, accum_steps):
        optimizer.zero_grad(set_to_none=True)
        for hook in hooks:
            hook.before_step(step + 1)
        group_loss, group_samples = accumulate_gradients(
            model,
            group,
            criterion=criterion,
            normalize=normalize,
            device=device,
            dtype=dtype,
            mixup=mixup,
            teacher=teacher,
        )
        samples += group_samples
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = nn.utils.get_total_norm(grads) if grads else zero
        bad = ~(torch.isfinite(group_loss) & torch.isfinite(norm))  # a non-finite step would poison the weights
        if grad_clip > 0:
            nn.utils.clip_grads_with_norm_(model.parameters(), grad_clip, norm)
        for hook in hooks:
            hook.after_step(step + 1)
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
        if progress is not None:
            progress.step(step - start_step, samples, group_loss)
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
    on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Loss and top-1/top-5 accuracy (in percent) over ``batches``, summed over all DDP processes.

    ``on_batch(inputs, labels, logits)`` sees each batch: its uint8 inputs as they came, and the logits it was scored
    on (``fovea.train.per_class.ValidationTally``: the confusion matrix and the misclassified gallery).

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
        # (B, classes): each video's mean logits (and each head's, for a distillation-token student)
        logits, heads = view_mean_logits(model, images, num_views, dtype=dtype, device=device, bare=bare)
        if on_batch is not None:
            on_batch(batch_inputs(batch), targets, logits)
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
