"""View-averaged logits: how a sample with several views (crops, flips, clips of a video) is scored, and the
scores of one evaluation mode (``ModeScores``) on the device it runs on (``eval_device``).

Training's validation (``fovea.train.loop.evaluate``) and the evaluation job (``fovea.evaluate.score``) both score
through ``view_mean_logits``, so a model is judged the same way in both places. Plain torch and numpy: no Ray,
MLflow or config, and nothing from ``fovea.train`` (which imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fovea.distill import head_logits


def view_mean_logits(
    model: nn.Module,
    inputs: torch.Tensor,
    num_views: int,
    *,
    dtype: torch.dtype | None,
    device: torch.device,
    bare: nn.Module | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Each sample's logits, the mean over its views, in float32.

    Args:
        model: the model to call (maybe DDP- or compile-wrapped).
        inputs: normalised inputs ``(B * num_views, 3, [T,] H, W)``, a sample's views next to each other.
        num_views: views per sample (1 for plain batches).
        dtype: the autocast dtype, or None for none.
        device: where ``model`` runs (autocast's device type).
        bare: ``model`` without its wrappers, to read a two-head student's heads (defaults to ``model``).

    Returns:
        ``(logits, heads)``: ``(B, classes)`` logits, and for a student with a distillation token the class-token
        and distillation-token logits ``(B, classes)`` each (``logits`` is then their mean, as the model predicts),
        else None.
    """
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        heads = head_logits(model if bare is None else bare, inputs)
        logits = model(inputs) if heads is None else (heads[0] + heads[1]) / 2
    logits = logits.float().unflatten(0, (-1, num_views)).mean(1)
    if heads is not None:
        heads = tuple(head.float().unflatten(0, (-1, num_views)).mean(1) for head in heads)
    return logits, heads


@dataclass
class ModeScores:
    """The scores of one mode (single or multi-view) over a split.

    Attributes:
        classes: class names, in the dataset's order (rows and columns of ``confusion``).
        confusion: ``(classes, classes)`` int64 counts, rows = true class, columns = predicted class.
        loss_sum: summed cross-entropy of each sample's (view-averaged) logits.
        top5_hits: samples whose true class is among the 5 highest logits (all of them when there are fewer).
        views: views per sample.
    """

    classes: list[str]
    confusion: np.ndarray
    loss_sum: float
    top5_hits: int
    views: int

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def top1(self) -> float:
        return 100.0 * self.correct / max(1, self.count)

    @property
    def top5(self) -> float:
        return 100.0 * self.top5_hits / max(1, self.count)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.count)

    def per_class(self) -> list[dict[str, Any]]:
        """A row per class: ``class``, ``count`` (samples of it), ``correct`` and ``accuracy`` (percent; NaN when the
        split has none of it)."""
        rows = []
        for index, name in enumerate(self.classes):
            count, correct = int(self.confusion[index].sum()), int(self.confusion[index, index])
            accuracy = 100.0 * correct / count if count else float("nan")
            rows.append({"class": name, "count": count, "correct": correct, "accuracy": accuracy})
        return rows


def eval_device(use_gpu: bool) -> torch.device:
    """CUDA when asked for and present, else the CPU."""
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
