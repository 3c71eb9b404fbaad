"""A training run's end-of-training records in MLflow: its last validation's confusion matrix (``confusion_matrix.png``
and ``.csv``), per-class recall (``per_class.csv``), a gallery of misclassified validation samples
(``misclassified.png``: true and predicted class over each image, a video's middle frame), and the dataset it trained
on as the run's input (``log_input``: digest = manifest hash, source = the dataset's location, counts as profile
and tags), so MLflow's runs list shows it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from fovea.track import store
from fovea.track.evaluation import confusion_csv, per_class_csv, plot_confusion_matrix

GALLERY_COLUMNS = 4
TILE = 128  # a gallery picture's side on the sheet, in pixels
CAPTION = 30  # the two caption lines above each picture


def draw_gallery(gallery: dict[str, Any], classes: Sequence[str]) -> Any:
    """The gallery as one RGB ``PIL.Image``: a grid of ``GALLERY_COLUMNS`` columns, each picture (uint8 ``(3, h, w)``)
    scaled to fit ``TILE`` pixels and captioned ``true: ...`` / ``pred: ... (confidence)``. Drawn with PIL: a
    fraction of a second, where a matplotlib grid took seconds on a busy CPU."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    images = gallery["images"]
    columns = min(GALLERY_COLUMNS, len(images))
    rows = math.ceil(len(images) / columns)
    width, height = TILE + 8, TILE + CAPTION + 8
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, image in enumerate(images):
        picture = Image.fromarray(np.ascontiguousarray(np.asarray(image).transpose(1, 2, 0)))
        scale = TILE / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR)
        left, top = (index % columns) * width + 4, (index // columns) * height + 4
        true, predicted = classes[gallery["labels"][index]], classes[gallery["predicted"][index]]
        confidence = 100.0 * float(gallery["confidence"][index])
        draw.text((left, top), f"true: {true[:20]}", fill=(0, 110, 0), font=font)
        draw.text((left, top + 13), f"pred: {predicted[:14]} ({confidence:.0f}%)", fill=(170, 0, 0), font=font)
        sheet.paste(picture, (left + (TILE - size[0]) // 2, top + CAPTION + (TILE - size[1]) // 2))
    return sheet


def recall_rows(confusion: Any, classes: Sequence[str]) -> list[dict[str, Any]]:
    """``per_class_csv``'s rows from a confusion matrix: count, correct and recall (percent; NaN without samples)."""
    rows = []
    for index, name in enumerate(classes):
        count, correct = int(sum(int(c) for c in confusion[index])), int(confusion[index][index])
        rows.append(
            {
                "class": name,
                "count": count,
                "correct": correct,
                "accuracy": 100.0 * correct / count if count else math.nan,
            }
        )
    return rows


def log_training_figures(
    uri: str, run_id: str, classes: Sequence[str], confusion: Any, gallery: dict[str, Any] | None
) -> list[str]:
    """Log the last validation's confusion matrix (PNG + CSV), per-class recall (CSV) and, when there are
    misclassified samples, their gallery to ``run_id``. Returns the artifact names logged."""
    client = store.client(uri)
    counts = (
        [[int(value) for value in row] for row in confusion.tolist()] if hasattr(confusion, "tolist") else confusion
    )
    client.log_text(run_id, confusion_csv(counts, classes), "confusion_matrix.csv")
    client.log_text(run_id, per_class_csv(recall_rows(counts, classes)), "per_class.csv")
    total = sum(map(sum, counts))
    correct = sum(counts[i][i] for i in range(len(counts)))
    title = f"validation: {total} samples, top-1 {100.0 * correct / max(1, total):.2f}%"
    client.log_figure(run_id, plot_confusion_matrix(counts, classes, title), "confusion_matrix.png")
    logged = ["confusion_matrix.csv", "per_class.csv", "confusion_matrix.png"]
    if gallery and gallery.get("images"):
        client.log_image(run_id, draw_gallery(gallery, classes), artifact_file="misclassified.png")
        logged.append("misclassified.png")
    return logged


def log_dataset_input(
    uri: str,
    run_id: str,
    *,
    name: str,
    digest: str,
    source: str,
    counts: dict[str, int],
    context: str = "training",
) -> None:
    """Record the dataset as the run's input (what ``mlflow.log_input`` records): its name, ``digest`` (the manifest
    hash), ``source`` (where it lives), ``counts`` (rows per split, classes) as the profile, the split counts also as
    input tags, and ``context``. MLflow's runs list shows it in its Dataset column."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source_type = source.split("://", 1)[0] if "://" in source else "local"
    dataset = Dataset(
        name=name[:500],
        digest=digest[:36],
        source_type=source_type,
        source=json.dumps({"uri": source}),
        profile=json.dumps(counts),
    )
    tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)]
    tags += [InputTag(key=f"fovea.{key}", value=str(value)) for key, value in counts.items()]
    store.client(uri).log_inputs(run_id, datasets=[DatasetInput(dataset=dataset, tags=tags)])
