"""The per-step learning-rate schedule (linear warmup, then cosine or constant) and the surgery a resume, an elastic
resize, PBT's exploit or a rollback does on it. Plain torch."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR


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


def scale_learning_rates(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, factor: float) -> None:
    """Multiply the schedule's peak learning rates (and so every later one) by ``factor``, keeping its position."""
    scheduler.base_lrs = [base * factor for base in scheduler.base_lrs]
    for group in optimizer.param_groups:
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    move_schedule(optimizer, scheduler, scheduler.last_epoch)
