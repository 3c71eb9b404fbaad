"""The evaluation job's scoring loop: every sample of a split through the model on the scoring device, counted into
a ``ModeScores`` (confusion matrix, top-5 hits, summed loss). Each sample's logits are the mean over its views
(``view_mean_logits``, as in training's validation); a distillation-token DeiT is scored on the mean of its two
heads, as it predicts."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fovea.evaluate.scoring import ModeScores, view_mean_logits


@torch.no_grad()
def score_batches(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    classes: list[str],
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    device: torch.device,
    video: bool,
    flip: bool = False,
    order: list[int] | None = None,
    precision: str = "fp32",
) -> ModeScores:
    """Score every sample of ``batches`` and count each (true, predicted) pair.

    Args:
        model: the classifier (moved to ``device`` and put in eval mode here).
        batches: uint8 ``{"image" or "video": ..., "label": ...}`` batches, one view ``(B, 3, [T,] H, W)`` or several
            ``(B, V, 3, [T,] H, W)`` per sample.
        classes: the dataset's class names (labels index them).
        mean: normalisation mean the model was trained with.
        std: normalisation std.
        device: where the model runs.
        video: batches hold clips.
        flip: add each view's horizontal flip (doubling the views).
        order: the model's logit columns in the dataset's class order (``logit_order``), or None.
        precision: ``fp32``, ``bf16`` or ``auto`` (bf16 autocast on CUDA).

    Raises:
        ValueError: the model gives another number of logits than there are classes.
    """
    from fovea.train.device import autocast_dtype
    from fovea.train.loop import Normalize, batch_inputs

    model = model.to(device).eval()
    normalize = Normalize(tuple(mean), tuple(std)).to(device)
    dtype = autocast_dtype(precision, device)
    num_classes = len(classes)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, top5_hits, num_views = 0.0, 0, 1
    index = torch.tensor(order) if order is not None else None
    for batch in batches:
        inputs = batch_inputs(batch).to(device, non_blocking=True)
        if inputs.dim() == (5 if video else 4):
            inputs = inputs.unsqueeze(1)  # one view: (B, 1, 3, [T,] H, W)
        if flip:
            inputs = torch.cat([inputs, inputs.flip(-1)], dim=1)  # each view and its mirror image
        num_views = inputs.shape[1]
        flat = normalize(inputs.flatten(0, 1))  # (B*V, 3, [T,] H, W): views are just more samples
        logits, _ = view_mean_logits(model, flat, num_views, dtype=dtype, device=device)
        logits = logits.cpu()  # (B, classes): mean over views
        if logits.shape[1] != num_classes:
            raise ValueError(f"the model gives {logits.shape[1]} logits, the dataset has {num_classes} classes")
        if index is not None:
            logits = logits[:, index]
        targets = batch["label"].to(torch.int64).cpu()
        predicted = logits.argmax(dim=1)
        confusion += torch.bincount(targets * num_classes + predicted, minlength=num_classes**2).view(
            num_classes, num_classes
        )
        top = logits.topk(min(5, num_classes), dim=1).indices
        top5_hits += int(top.eq(targets[:, None]).any(dim=1).sum())
        loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
    return ModeScores(
        classes=list(classes), confusion=confusion.numpy(), loss_sum=loss_sum, top5_hits=top5_hits, views=num_views
    )
