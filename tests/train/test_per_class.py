"""Per-class validation results: the confusion matrix from logits (through ``evaluate``'s batch hook), recall and
balanced accuracy with a class the split lacks, the misclassified gallery's selection and thumbnails, the class
metric keys MLflow takes, the epoch line and the gallery figure."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow.utils.validation import _validate_metric_name
from torch import nn

from fovea.track import class_metric_keys
from fovea.track.figures import CAPTION, TILE, draw_gallery, recall_rows
from fovea.train.loop import Normalize, evaluate
from fovea.train.per_class import (
    MistakeGallery,
    ValidationTally,
    balanced_accuracy,
    confusion_from_logits,
    per_class_recall,
    thumbnail,
    worst_classes,
)
from fovea.train.worker import format_progress


def test_confusion_from_logits_counts_true_rows_and_predicted_columns():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    targets = torch.tensor([0, 1, 0, 2, 2])
    confusion = confusion_from_logits(logits, targets, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert confusion.dtype == torch.int64 and int(confusion.sum()) == 5


def test_balanced_accuracy_leaves_out_a_class_the_split_lacks():
    confusion = [[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 1]]  # class 2 has no sample
    recall = per_class_recall(confusion)
    assert recall[:2] == [100.0, 50.0] and math.isnan(recall[2]) and recall[3] == 25.0
    assert balanced_accuracy(confusion) == pytest.approx((100.0 + 50.0 + 25.0) / 3)
    # plain accuracy would be 4/8 = 50%: the weak, large class weighs as much as the others
    assert worst_classes(confusion, ["a", "b", "c", "d"], count=2) == [("d", 25.0), ("b", 50.0)]
    assert math.isnan(balanced_accuracy([[0, 0], [0, 0]]))


class _Fixed(nn.Module):
    """Logits read off the input: class = the image's red level // 100 (0, 1, 2), with a known mistake."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        level = images[:, 0, 0, 0]  # normalised with mean 0, std 1/255: the uint8 value
        return nn.functional.one_hot((level // 100).long().clamp(0, 2), 3).float() * 4


def test_the_tally_sees_every_batch_of_evaluate_and_keeps_the_mistakes():
    levels = [10, 20, 150, 160, 250, 120]  # classes 0, 0, 1, 1, 2, 1
    labels = [0, 0, 1, 1, 2, 2]  # the last is a class-2 sample predicted as 1
    images = torch.tensor(levels, dtype=torch.uint8)[:, None, None, None].expand(-1, 3, 8, 8).contiguous()
    batches = [{"image": images[i : i + 4], "label": torch.tensor(labels[i : i + 4])} for i in (0, 4)]
    tally = ValidationTally(3, torch.device("cpu"), gallery=4)
    normalize = Normalize((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
    result = evaluate(_Fixed(), batches, normalize=normalize, device=torch.device("cpu"), on_batch=tally)
    confusion = tally.confusion()
    assert confusion.tolist() == [[2, 0, 0], [0, 2, 0], [0, 1, 1]]
    assert int(confusion.sum()) == result["count"] == 6
    assert result["top1"] == pytest.approx(100 * 5 / 6)
    assert balanced_accuracy(confusion) == pytest.approx((100 + 100 + 50) / 3)
    kept = tally.gallery.state()
    assert kept["labels"] == [2] and kept["predicted"] == [1]
    assert kept["images"][0].shape == (3, 8, 8) and int(kept["images"][0][0, 0, 0]) == 120


def _offer(gallery: MistakeGallery, labels: list[int], confidences: list[float]) -> None:
    """Mistakes of the given true classes, predicted as class 9 with the given probabilities."""
    logits = torch.full((len(labels), 10), -30.0)
    for row, conf in enumerate(confidences):  # the predicted class's softmax probability is ``conf``
        logits[row, 9] = math.log(9 * conf / (1 - conf)) - 30.0  # against nine logits of -30
    images = torch.arange(len(labels), dtype=torch.uint8)[:, None, None, None].expand(-1, 3, 4, 4)
    gallery.offer(images, torch.tensor(labels), logits)


def test_the_gallery_spreads_over_classes_and_keeps_the_most_confident():
    gallery = MistakeGallery(limit=4)
    _offer(gallery, [0, 0, 0, 0, 0], [0.5, 0.9, 0.6, 0.95, 0.7])  # one class only: its 4 most confident
    assert sorted(m.confidence for m in gallery.kept) == pytest.approx([0.6, 0.7, 0.9, 0.95], abs=1e-3)
    _offer(gallery, [1, 2], [0.2, 0.3])  # other classes push out class 0's least confident
    state = gallery.state()
    assert state["labels"] == [0, 0, 1, 2]
    assert state["confidence"][:2] == pytest.approx([0.95, 0.9], abs=1e-3)
    assert all(image.dtype == torch.uint8 for image in state["images"])
    assert MistakeGallery(limit=0).state() is None


def test_thumbnails_take_a_clips_middle_frame_and_shrink_large_images():
    clip = torch.zeros(3, 5, 8, 8, dtype=torch.uint8)
    clip[:, 2] = 200  # the middle of 5 frames
    assert thumbnail(clip).shape == (3, 8, 8) and int(thumbnail(clip).min()) == 200
    views = clip[None].expand(2, -1, -1, -1, -1)  # (V, 3, T, H, W): the first view
    assert int(thumbnail(views).min()) == 200
    large = torch.full((3, 200, 400), 77, dtype=torch.uint8)
    small = thumbnail(large, side=100)
    assert small.shape == (3, 50, 100) and int(small.float().mean().round()) == 77


@pytest.mark.parametrize(
    "names",
    [
        ["cat", "golden retriever", "a/b", "../up", "...", "x:y", "ünïcode", "a b(c)", "a?b", "a!b", "a" * 400],
    ],
)
def test_class_metric_keys_are_valid_mlflow_keys_one_per_class(names):
    keys = class_metric_keys("val_recall/", names)
    assert len(set(keys)) == len(names)
    for key in keys:
        _validate_metric_name(key)  # raises on a key MLflow refuses
        assert key.startswith("val_recall/") and len(key) <= 250
    assert keys[:2] == ["val_recall/cat", "val_recall/golden retriever"]


def test_the_epoch_line_shows_balanced_accuracy_the_lowest_classes_and_slow_rates():
    metrics = {
        "epoch": 2, "train_loss": 1.0, "val_loss": 0.5, "val_top1": 64.65, "val_top5": 100.0,
        "val_balanced_acc": 57.1, "samples_per_sec": 0.42, "epoch_time_s": 30.0,
    }  # fmt: skip
    line = format_progress(metrics, 3, [("jump", 0.0), ("run", 12.5)])
    assert "| balanced 57.10%, lowest jump 0.0%, run 12.5%" in line
    assert "0.42 samples/s" in line  # not "0 samples/s"
    perfect = format_progress({**metrics, "val_balanced_acc": 100.0}, 3, [("jump", 100.0)])
    assert "| balanced 100.00% |" in perfect  # no class to name


def test_the_gallery_sheet_and_recall_table():
    gallery = {
        "images": [torch.full((3, 6, 12), v, dtype=torch.uint8) for v in (0, 128, 250, 60, 90)],
        "labels": [0, 1, 1, 0, 0],
        "predicted": [1, 0, 0, 1, 1],
        "confidence": [0.9, 0.8, 0.7, 0.6, 0.5],
    }
    sheet = draw_gallery(gallery, ["left", "right"])
    width, height = TILE + 8, TILE + CAPTION + 8
    assert sheet.size == (4 * width, 2 * height)  # 4 columns, 2 rows
    # each picture scaled to the tile's width, centred below its caption: its pixels are there
    centre = (4 + TILE // 2, 4 + CAPTION + TILE // 2)
    for index, value in enumerate((0, 128, 250, 60, 90)):
        column, row = index % 4, index // 4
        assert sheet.getpixel((column * width + centre[0], row * height + centre[1])) == (value,) * 3
    caption = sheet.crop((4, 4, 4 + TILE, 4 + CAPTION))
    assert caption.getextrema() != ((255, 255), (255, 255), (255, 255))  # the captions are drawn
    rows = recall_rows([[3, 1], [0, 0]], ["left", "right"])
    assert rows[0] == {"class": "left", "count": 4, "correct": 3, "accuracy": 75.0}
    assert rows[1]["count"] == 0 and math.isnan(rows[1]["accuracy"])
