"""Per-class results of a validation pass: the confusion matrix (summed over every worker), each class's recall, the
balanced accuracy, the classes doing worst, and a small gallery of misclassified samples. Plain torch.

``ValidationTally`` is handed to ``fovea.train.loop.evaluate`` as its ``on_batch``: it sees each batch's uint8 inputs,
labels and (view-averaged) logits. Balanced accuracy is the mean recall over the classes the split has (a class with
no validation sample has no recall and is left out, as scikit-learn's ``balanced_accuracy_score`` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn import functional

GALLERY_SIZE = 16  # misclassified samples kept for the gallery
THUMBNAIL_SIDE = 112  # a gallery image's longer side, in pixels (at most)


def confusion_from_logits(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(classes, classes)`` int64 counts of one batch: rows are the true class, columns the predicted (arg-max)."""
    predicted = logits.argmax(dim=1)
    index = targets.long() * num_classes + predicted
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_recall(confusion: Any) -> list[float]:
    """Each class's recall in percent (its diagonal count over its row's), NaN for a class with no sample."""
    counts = torch.as_tensor(confusion, dtype=torch.float64)
    totals = counts.sum(dim=1)
    return [
        100.0 * float(hit) / float(total) if total > 0 else math.nan
        for hit, total in zip(counts.diag(), totals, strict=True)
    ]


def balanced_accuracy(confusion: Any) -> float:
    """The mean recall (percent) over the classes that have samples; NaN when none has."""
    present = [recall for recall in per_class_recall(confusion) if not math.isnan(recall)]
    return sum(present) / len(present) if present else math.nan


def worst_classes(confusion: Any, classes: Sequence[str], count: int = 3) -> list[tuple[str, float]]:
    """The ``count`` classes of lowest recall (those with samples), lowest first: ``[(name, recall %), ...]``."""
    recalls = [(recall, index) for index, recall in enumerate(per_class_recall(confusion)) if not math.isnan(recall)]
    return [(classes[index], recall) for recall, index in sorted(recalls)[:count]]


@dataclass(eq=False)  # kept and evicted by identity: == would compare image tensors
class Mistake:
    """One misclassified sample the gallery keeps: true and predicted class, the predicted class's probability and
    a thumbnail (uint8 ``(3, h, w)``; None until the batch it came from is done)."""

    label: int
    predicted: int
    confidence: float
    image: torch.Tensor | None = None


def thumbnail(inputs: torch.Tensor, side: int = THUMBNAIL_SIDE) -> torch.Tensor:
    """A uint8 ``(3, h, w)`` picture of one sample on the CPU, its longer side at most ``side``: an image as it is,
    a clip's middle frame (``(3, T, H, W)``), a multi-view sample's first view."""
    while inputs.dim() > 4 or (inputs.dim() == 4 and inputs.shape[0] != 3):
        inputs = inputs[0]  # (V, 3, ...) multi-view: the first view
    if inputs.dim() == 4:  # (3, T, H, W): the middle frame
        inputs = inputs[:, inputs.shape[1] // 2]
    height, width = inputs.shape[-2:]
    scale = side / max(height, width)
    if scale < 1:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        resized = functional.interpolate(inputs[None].float(), size=size, mode="bilinear", antialias=True)[0]
        inputs = resized.round().clamp(0, 255).to(torch.uint8)
    return inputs.to("cpu", torch.uint8).contiguous()


class MistakeGallery:
    """Up to ``limit`` misclassified samples, spread over the true classes (a new mistake of a class with fewer kept
    pushes out one of the class with the most), the most confident mistakes of each class kept."""

    def __init__(self, limit: int = GALLERY_SIZE, side: int = THUMBNAIL_SIDE) -> None:
        self.limit, self.side = limit, side
        self.kept: list[Mistake] = []

    def offer(self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor) -> None:
        """Consider a batch's mistakes; thumbnails are made only of those kept."""
        if self.limit <= 0:
            return
        probabilities = logits.float().softmax(dim=1)
        confidence, predicted = probabilities.max(dim=1)
        wrong = (predicted != targets).nonzero().flatten().tolist()
        if not wrong:
            return
        labels, preds, confs = (values[wrong].tolist() for values in (targets, predicted, confidence))
        fresh: dict[int, Mistake] = {}
        for row, label, pred, conf in zip(wrong, labels, preds, confs, strict=True):
            mistake = Mistake(int(label), int(pred), float(conf))
            self.kept.append(mistake)
            fresh[row] = mistake
            if len(self.kept) > self.limit:
                self.kept.remove(self.eviction())
        for row, mistake in fresh.items():
            if any(kept is mistake for kept in self.kept):
                mistake.image = thumbnail(inputs[row], self.side)

    def eviction(self) -> Mistake:
        """The mistake to drop: the least confident of the class with the most kept (ties: the higher class)."""
        per_class: dict[int, int] = {}
        for mistake in self.kept:
            per_class[mistake.label] = per_class.get(mistake.label, 0) + 1
        return max(self.kept, key=lambda m: (per_class[m.label], -m.confidence, m.label))

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps (``torch.load(weights_only=True)`` reads it): the mistakes by class, most confident
        first; None when there is none."""
        kept = sorted((m for m in self.kept if m.image is not None), key=lambda m: (m.label, -m.confidence))
        if not kept:
            return None
        return {
            "images": [m.image for m in kept],
            "labels": [m.label for m in kept],
            "predicted": [m.predicted for m in kept],
            "confidence": [m.confidence for m in kept],
        }


class ValidationTally:
    """``evaluate``'s ``on_batch``: the confusion matrix of a validation pass, and (``gallery > 0``) its gallery.

    Every worker must call ``confusion()`` (it sums over the process group); the gallery holds this worker's
    mistakes only (rank 0's, in a training run).
    """

    def __init__(self, num_classes: int, device: torch.device, *, gallery: int = 0) -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
        self.gallery = MistakeGallery(gallery)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor) -> None:
        self.counts += confusion_from_logits(logits, targets, self.num_classes)
        self.gallery.offer(inputs, targets, logits)

    def confusion(self) -> torch.Tensor:
        """The counts summed over every worker, on the CPU."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)
        return self.counts.cpu()
