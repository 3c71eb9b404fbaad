"""Decode and augment encoded images into uint8 CHW arrays, one Ray Data batch at a time.

Everything here runs on CPU in Ray Data's ``map_batches`` tasks and emits uint8: a quarter of the bytes of
float32 to move to the training worker, which converts and normalises on its own device (see
``fovea.train.loop.Normalize``).
"""

from __future__ import annotations

import io
import logging
import math
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

log = logging.getLogger(__name__)


def eval_resize_size(img_size: int, crop_pct: float) -> int:
    """The shorter side images are resized to before the centre crop (timm's ``crop_pct`` rule)."""
    return int(math.floor(img_size / crop_pct))


def build_image_transform(
    img_size: int,
    *,
    train: bool,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (0.75, 1.3333),
    hflip: float = 0.5,
    randaugment_ops: int = 0,
    randaugment_magnitude: int = 9,
    crop_pct: float = 0.875,
) -> T.Compose:
    """The per-image PIL -> uint8 CHW tensor pipeline: RandomResizedCrop/flip/RandAugment, or resize + centre crop."""
    bicubic = InterpolationMode.BICUBIC
    if train:
        steps: list[Any] = [T.RandomResizedCrop(img_size, scale=crop_scale, ratio=crop_ratio, interpolation=bicubic)]
        if hflip > 0:
            steps.append(T.RandomHorizontalFlip(hflip))
        if randaugment_ops > 0:
            steps.append(T.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude))
    else:
        steps = [T.Resize(eval_resize_size(img_size, crop_pct), interpolation=bicubic), T.CenterCrop(img_size)]
    return T.Compose([*steps, T.PILToTensor()])


class DecodeImages:
    """``map_batches`` callable: ``{"image": encoded bytes, "label"}`` to ``{"image": uint8 (N, 3, H, W), "label"}``.

    Rows whose bytes no longer decode (a shard damaged after preparation) are dropped with a warning that counts
    them, instead of failing the epoch.
    """

    def __init__(self, img_size: int, *, train: bool, **augment: Any) -> None:
        self.img_size = img_size
        self.transform = build_image_transform(img_size, train=train, **augment)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, labels, skipped = [], [], 0
        for data, label in zip(batch["image"], batch["label"], strict=True):
            try:
                with Image.open(io.BytesIO(data)) as img:
                    # camera photos store their rotation in EXIF; preparation keeps the original bytes
                    rgb = ImageOps.exif_transpose(img).convert("RGB")
            except Exception as err:  # any decoder error: skip the row, never the epoch
                skipped += 1
                log.warning("skipping an image that does not decode (%s); %d in this batch", err, skipped)
                continue
            images.append(self.transform(rgb))
            labels.append(label)
        if not images:
            return {
                "image": np.zeros((0, 3, self.img_size, self.img_size), np.uint8),
                "label": np.zeros((0,), np.int64),
            }
        return {"image": torch.stack(images).numpy(), "label": np.asarray(labels, dtype=np.int64)}
