"""What a worker trains with, built from the run's config: the model, its normalisation, the optimizer and its
per-step schedule (``fovea.train.schedule``), EMA, mixup/cutmix, the loss (with
distillation and injected faults). Plain torch and timm; the teacher arrives already loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from fovea.config import Config
from fovea.distill import DistillationLoss, Teacher, use_distillation_token
from fovea.models import create_model
from fovea.recipe import model_create_args
from fovea.train.faults import NanAtSteps, StepHook
from fovea.train.loop import Normalize
from fovea.train.schedule import build_scheduler


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


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """``train.grad_checkpointing=true``: turn on the model's activation checkpointing, or fail in one line."""
    if not hasattr(model, "set_grad_checkpointing"):
        raise ValueError(f"train.grad_checkpointing: {name} has no activation checkpointing")
    model.set_grad_checkpointing(True)


@dataclass
class TrainingParts:
    """Everything one worker trains with, as the config builds it (before a checkpoint is loaded into it)."""

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalize: Normalize
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    ema: Any | None  # timm's ModelEmaV3
    mixup: Mixup | None
    criterion: nn.Module
    teacher: Teacher | None
    hooks: tuple[StepHook, ...]  # called around every optimizer step (fault injection)
    steps_per_epoch: int


def build_parts(
    cfg: Config,
    *,
    classes: list[str],
    train_count: int,
    world: int,
    device: torch.device,
    teacher: Any = None,
    registry_uri: str | None = None,
) -> TrainingParts:
    """The model (on ``device``, from published or local weights when the config says so), optimizer, schedule,
    EMA and loss of a run with ``train_count`` training rows over ``world`` workers.

    Args:
        teacher: a loaded teacher (``fovea.distill.load_teacher``'s result) when the run distills.
        registry_uri: where a ``models:/`` ``model.checkpoint`` is downloaded from (into this node's cache).
    """
    from fovea.sources import start_weights_path

    start = start_weights_path(cfg.model.checkpoint, registry_uri or "") if cfg.model.checkpoint else ""
    model = create_model(
        cfg.model.name,
        **model_create_args(cfg, num_classes=len(classes)),
        pretrained=cfg.model.pretrained,
        checkpoint=start,
        drop_rate=cfg.model.drop_rate,
        drop_path_rate=cfg.model.drop_path_rate,
    ).to(device)
    mean, std = normalization(model, cfg.data)
    frozen = None
    if teacher is not None:
        frozen = build_teacher(cfg, teacher, model, mean=mean, std=std, device=device)
    steps_per_epoch = max(1, train_count // world // cfg.data.batch_size // cfg.optim.accum_steps)
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
    mixup = build_mixup(cfg.data, num_classes=len(classes), label_smoothing=cfg.train.label_smoothing)
    criterion = build_criterion(mixup=mixup, label_smoothing=cfg.train.label_smoothing)
    if frozen is not None:
        criterion = DistillationLoss(
            cfg.distill.type,
            alpha=cfg.distill.alpha,
            tau=cfg.distill.tau,
            kl_reduction=cfg.distill.kl_reduction,
            # mixup's soft targets already carry the smoothing; either way it reaches the label term only
            label_smoothing=0.0 if mixup is not None else cfg.train.label_smoothing,
        )
    hooks: tuple[StepHook, ...] = ()
    if cfg.train.inject_nan_steps:  # fault injection: NaN losses at these steps
        criterion = NanAtSteps(criterion, cfg.train.inject_nan_steps)
        hooks = (criterion,)
    return TrainingParts(
        model=model,
        mean=mean,
        std=std,
        normalize=Normalize(mean, std).to(device),
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        mixup=mixup,
        criterion=criterion,
        teacher=frozen,
        hooks=hooks,
        steps_per_epoch=steps_per_epoch,
    )


def build_teacher(
    cfg: Config,
    loaded: Any,
    student: nn.Module,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
) -> Teacher:
    """The frozen teacher on this worker's device, from the loaded copy the driver sent.

    It is never DDP-wrapped: each worker scores its own batch. A student with a distillation token gets its
    distilled-training switch turned on here (``distill.heads``), so it returns ``(cls_logits, dist_logits)``.
    """
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
