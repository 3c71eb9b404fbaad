"""DeiT knowledge distillation (Touvron et al. 2021, "Training data-efficient image transformers & distillation
through attention"): the soft and hard distillation losses, the frozen teacher, and loading it (``fovea.sources``
builds the model; this module names it and checks it fits).

The loss follows the paper's Eq. 2-3 with λ = ``alpha`` and τ = ``tau``:

    soft:  L = (1 - λ) CE(ψ(Z_s), y) + λ τ² KL(ψ(Z_t / τ) ‖ ψ(Z_s / τ))
    hard:  L = (1 - λ) CE(ψ(Z_s), y) + λ CE(ψ(Z_s), y_t),   y_t = argmax_c Z_t(c)

A student with a distillation token (timm's ``VisionTransformerDistilled``) returns ``(cls_logits, dist_logits)``
in distilled training: the class head takes the label term and the distillation head the teacher term. Any
other student has one head, which takes both terms (plain logit distillation, as in Hinton et al. 2015).

This module imports no Ray and no MLflow: a teacher from the model registry is fetched by ``fovea.track``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fovea.errors import typed_line

if TYPE_CHECKING:
    from fovea.sources import LoadedModel

DistillType = Literal["none", "soft", "hard"]
Outputs = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits to float32 for the softmax and KL; float32 and float64 stay as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


class DistillationLoss(nn.Module):
    """The DeiT objective around a cross-entropy label term.

    Args:
        type: ``none`` (labels only), ``soft`` or ``hard``.
        alpha: λ, the weight of the teacher term; the label term gets ``1 - alpha``.
        tau: τ, the softmax temperature of soft distillation (the KL term is scaled by τ² so its gradients keep
            their size as τ changes, as in Hinton et al. 2015).
        kl_reduction: ``batchmean`` sums the KL over classes and averages over samples: the KL divergence per
            sample, as the formula reads. ``legacy`` divides the summed KL by batch x classes, as DeiT's
            reference code does (``reduction="sum"`` then ``/ outputs_kd.numel()``); that makes the soft term
            ``num_classes`` times weaker (1000x on ImageNet) than the formula, so λ and τ tuned under one
            reduction do not carry over to the other. Use it to reproduce DeiT's published recipes.
        label_smoothing: smoothing of the label term only; the teacher term never sees smoothed targets. With
            mixup/cutmix the targets arrive as probabilities that already carry the smoothing: leave this at 0.

    Call as ``loss(outputs, targets, teacher_logits)``: ``outputs`` is the student's logits ``(B, C)`` or its
    ``(cls_logits, dist_logits)`` pair, ``targets`` class indices ``(B,)`` or probabilities ``(B, C)`` (mixup),
    ``teacher_logits`` ``(B, C)`` computed on the same (mixed) images, or None when ``type`` is ``none``.
    """

    def __init__(
        self,
        type: DistillType = "none",
        alpha: float = 0.5,
        tau: float = 1.0,
        kl_reduction: Literal["batchmean", "legacy"] = "batchmean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if type not in ("none", "soft", "hard"):
            raise ValueError(f"distillation type must be none, soft or hard, not {type!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], not {alpha}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, not {tau}")
        if kl_reduction not in ("batchmean", "legacy"):
            raise ValueError(f"kl_reduction must be batchmean or legacy, not {kl_reduction!r}")
        self.type, self.alpha, self.tau = type, alpha, tau
        self.kl_reduction, self.label_smoothing = kl_reduction, label_smoothing

    def label_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against class indices (with label smoothing) or against mixup's target probabilities."""
        if targets.dtype.is_floating_point:
            return torch.sum(-targets * F.log_softmax(_full(logits), dim=-1), dim=-1).mean()
        return F.cross_entropy(_full(logits), targets, label_smoothing=self.label_smoothing)

    def teacher_loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The teacher term before weighting: τ²·KL for ``soft``, CE against the teacher's argmax for ``hard``."""
        teacher_logits = _full(teacher_logits.detach())
        logits = _full(logits)
        if self.type == "hard":
            return F.cross_entropy(logits, teacher_logits.argmax(dim=-1))
        student_log_probs = F.log_softmax(logits / self.tau, dim=-1)  # (B, C)
        teacher_log_probs = F.log_softmax(teacher_logits / self.tau, dim=-1)  # (B, C)
        # KL(p_t ‖ p_s) = Σ_c p_t (log p_t - log p_s), summed over the batch here and normalised below
        kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="sum", log_target=True)
        denominator = logits.numel() if self.kl_reduction == "legacy" else logits.shape[0]
        return kl * (self.tau * self.tau) / denominator

    def forward(
        self, outputs: Outputs, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        if isinstance(outputs, (tuple, list)):
            cls_logits, dist_logits = outputs
        else:
            cls_logits = dist_logits = outputs
        if self.type == "none":
            # a two-head student trained without a teacher is scored on its averaged heads, as it predicts
            logits = cls_logits if cls_logits is dist_logits else (cls_logits + dist_logits) / 2
            return self.label_loss(logits, targets)
        if teacher_logits is None:
            raise ValueError(f"{self.type} distillation needs the teacher's logits")
        if teacher_logits.shape != dist_logits.shape:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} vs student {tuple(dist_logits.shape)}")
        label_term = self.label_loss(cls_logits, targets)
        return (1.0 - self.alpha) * label_term + self.alpha * self.teacher_loss(dist_logits, teacher_logits)

    def extra_repr(self) -> str:
        return f"type={self.type}, alpha={self.alpha}, tau={self.tau}, kl_reduction={self.kl_reduction}"


class Teacher(nn.Module):
    """A frozen teacher that scores the student's batch.

    The student's batch arrives normalised with the student's mean/std; when the teacher was trained with other
    statistics the batch is re-normalised (a per-channel affine map, so it commutes with mixup). The teacher
    stays in eval mode whatever ``train()`` is called with, its parameters need no gradients, and its forward
    runs under ``no_grad``. On CUDA it runs in bf16 (``dtype``) and returns float32 logits.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        student_mean: tuple[float, ...],
        student_std: tuple[float, ...],
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.dtype = dtype
        if dtype is not None:
            self.model.to(dtype=dtype)
        teacher_mean, teacher_std = torch.tensor(mean), torch.tensor(std)
        # x_teacher = x_student * s_s / s_t + (m_s - m_t) / s_t, per channel: (1, 3, 1, 1)
        self.same_stats = bool(torch.allclose(teacher_mean, torch.tensor(student_mean))) and bool(
            torch.allclose(teacher_std, torch.tensor(student_std))
        )
        scale = (torch.tensor(student_std) / teacher_std).view(1, -1, 1, 1)
        shift = ((torch.tensor(student_mean) - teacher_mean) / teacher_std).view(1, -1, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:  # noqa: ARG002 - a teacher is never trained
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.same_stats:
            images = images * self.scale + self.shift
        if self.dtype is not None:
            images = images.to(self.dtype)
        logits = self.model(images)
        if isinstance(logits, (tuple, list)):  # a distilled DeiT teacher in some custom train mode
            logits = (logits[0] + logits[1]) / 2
        return logits.float()


@dataclass
class LoadedTeacher:
    """A teacher model on the CPU with what is known about it (``teacher_of`` makes one from what
    ``fovea.sources`` loads); ``source`` names it in messages."""

    model: nn.Module
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] | None = None
    details: dict[str, str] = field(default_factory=dict)


def teacher_of(loaded: LoadedModel) -> LoadedTeacher:
    """The teacher a loaded model makes, named by where its weights were read (a registry reference as given, with
    the version it resolved to)."""
    details = {"model_name": loaded.model_name}
    if loaded.kind == "registry":
        source = f"{loaded.source} (version {loaded.version})"
        details = {"version": loaded.version or "", "run_id": loaded.source_run_id or "", **details}
    else:
        source = loaded.location
        if loaded.kind == "checkpoint":
            details["epoch"] = "" if loaded.epoch is None else str(loaded.epoch)
    return LoadedTeacher(
        model=loaded.module, source=source, mean=loaded.mean, std=loaded.std, classes=loaded.classes, details=details
    )


def teacher_kind(spec: str) -> Literal["registry", "file", "name"]:
    """How a ``distill.teacher`` value is read: a registry URI, a checkpoint file or folder, or a model name."""
    if spec.startswith("models:/"):
        return "registry"
    if "/" in spec or spec.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(spec).exists():
        return "file"
    return "name"


def load_teacher_file(path: str | Path, *, num_classes: int, img_size: int) -> LoadedTeacher:
    """A teacher from a fovea training checkpoint (``checkpoint.pt`` or the folder holding it) or a model folder.

    ``num_classes`` is only used for checkpoints that do not record their classes (``<= 0``: unknown).

    The checkpoint records its model name, constructor arguments, classes and normalisation, so nothing else is
    needed. For a bare weights file, name the architecture in ``distill.teacher`` and pass the file as
    ``distill.teacher_checkpoint``.
    """
    from fovea.checkpoints import CHECKPOINT_FILE
    from fovea.model_folder import is_model_dir
    from fovea.sources import NotACheckpoint, load_checkpoint_model

    given = str(path)
    path = Path(path).expanduser()
    if is_model_dir(path):  # a downloaded or imported model (`fovea models download`, `fovea weights import --out`)
        from fovea.sources import load_folder_model

        return teacher_of(load_folder_model(path, given))
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise ValueError(f"no such checkpoint file: {path}")
    try:  # checksum checked when there is one; weights_only: never unpickles objects
        loaded = load_checkpoint_model(path, given, num_classes=num_classes)
    except NotACheckpoint as err:
        if err.missing & {"model", "config"}:
            raise ValueError(
                f"{path} is not a fovea checkpoint; for a plain weights file set distill.teacher to the model name "
                "and distill.teacher_checkpoint to the file"
            ) from None
        raise ValueError(f"{path} does not record its classes") from None
    return teacher_of(loaded)


def load_teacher_by_name(
    name: str, *, num_classes: int, img_size: int, checkpoint: str = "", pretrained: bool = False
) -> LoadedTeacher:
    """A timm or fovea architecture with weights from a local file or timm's published weights.

    The weights must include a classifier for the dataset's ``num_classes`` (``num_classes <= 0``: as many as the
    weights' classifier has): a teacher with a fresh head would teach noise, so unlike fine-tuning nothing is
    skipped.
    """
    from fovea.sources import load_named_model

    if not checkpoint and not pretrained:
        raise ValueError(
            f"teacher {name!r} needs weights: set distill.teacher_checkpoint=FILE (or distill.teacher_pretrained=true)"
        )
    if checkpoint and not Path(checkpoint).expanduser().is_file():
        raise ValueError(f"distill.teacher_checkpoint: no such file: {checkpoint}")
    loaded = load_named_model(
        name, num_classes=num_classes, img_size=img_size, checkpoint=checkpoint, pretrained=pretrained
    )
    return teacher_of(loaded)


def load_teacher_from_registry(model_uri: str, *, tracking_uri: str) -> LoadedTeacher:
    """A teacher registered in MLflow (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``), via ``fovea.sources``."""
    from fovea.sources import load_registry_model

    return teacher_of(load_registry_model(model_uri, model_uri, tracking_uri))


def load_teacher(
    spec: str,
    *,
    num_classes: int,
    img_size: int,
    checkpoint: str = "",
    pretrained: bool = False,
    tracking_uri: str = "",
) -> LoadedTeacher:
    """Load the teacher a ``distill.teacher`` value names, on the CPU (see ``teacher_kind`` for the forms).

    Raises:
        ValueError: one line naming what could not be loaded.
    """
    kind = teacher_kind(spec)
    if kind != "name" and (checkpoint or pretrained):
        raise ValueError("distill.teacher_checkpoint/teacher_pretrained go with a teacher given by model name")
    if kind == "registry":
        if not tracking_uri:
            raise ValueError(f"{spec}: a registry teacher needs a tracking URI (track.uri or MLFLOW_TRACKING_URI)")
        return load_teacher_from_registry(spec, tracking_uri=tracking_uri)
    if kind == "file":
        return load_teacher_file(spec, num_classes=num_classes, img_size=img_size)
    return load_teacher_by_name(
        spec, num_classes=num_classes, img_size=img_size, checkpoint=checkpoint, pretrained=pretrained
    )


def check_teacher(teacher: LoadedTeacher, *, classes: list[str], img_size: int) -> None:
    """Check that the teacher scores this dataset: same classes in the same order, logits for a student batch.

    Raises:
        ValueError: one line saying what does not fit.
    """
    if teacher.classes is not None and list(teacher.classes) != list(classes):
        raise ValueError(
            f"teacher {teacher.source} was trained on classes {teacher.classes[:8]}"
            f"{'...' if len(teacher.classes) > 8 else ''}, the dataset has {classes[:8]}"
            f"{'...' if len(classes) > 8 else ''}"
        )
    probe = torch.zeros(2, 3, img_size, img_size)
    try:
        with torch.no_grad():
            logits = teacher.model.eval()(probe)
    except Exception as err:  # noqa: BLE001 - any failure here means the teacher cannot score the batch
        raise ValueError(
            f"teacher {teacher.source} does not take {img_size}x{img_size} images ({typed_line(err)})"
        ) from None
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if tuple(logits.shape) != (2, len(classes)):
        raise ValueError(
            f"teacher {teacher.source} gives {tuple(logits.shape)[1:]} logits, the dataset has {len(classes)} classes"
        )


def has_distillation_token(model: nn.Module) -> bool:
    """True for students with a distillation token and head (timm's ``VisionTransformerDistilled``)."""
    return hasattr(model, "head_dist") and hasattr(model, "set_distilled_training")


def use_distillation_token(model: nn.Module, heads: Literal["auto", "token", "single"]) -> bool:
    """Whether the student's distillation head takes the teacher term (``distill.heads``).

    Raises:
        ValueError: ``heads="token"`` for a student without a distillation token.
    """
    token = has_distillation_token(model)
    if heads == "token" and not token:
        raise ValueError(
            f"distill.heads=token: {type(model).__name__} has no distillation token "
            "(use a *_distilled_* DeiT, or distill.heads=auto for logit distillation on its single head)"
        )
    return token and heads != "single"


def head_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The class-token and distillation-token logits of a two-head student, or None for other models.

    In eval mode timm's distilled DeiT returns the mean of its heads; this runs the same network but keeps them
    apart, so evaluation can report each head and their mean.
    """
    if not has_distillation_token(model):
        return None
    tokens = model.forward_features(images)  # (B, 2 + N, D): class token, distillation token, patches
    return model.head(model.head_drop(tokens[:, 0])), model.head_dist(model.head_drop(tokens[:, 1]))
