"""JPEG decoding on the training device (``data.jpeg_decode=device``): nvJPEG on a GPU, libjpeg on a CPU.

Decoding is most of an image pipeline's CPU cost (the performance issue measured about 3,200 images/s for CPU
decode + RandomResizedCrop in 16 processes against about 13,000 for batched nvJPEG on one H200). With this option
the Ray Data tasks only read each JPEG's header and choose its crop (:class:`PlanCrops`); the training worker
decodes the whole batch on its device with one ``torchvision.io.decode_jpeg`` call and crops, resizes and flips
there (:func:`decode_batch`). Images that are not baseline RGB/greyscale JPEGs (PNGs, CMYK or EXIF-rotated JPEGs)
are decoded by :mod:`fovea.data.images`'s rule (as in the CPU path: transparency composited onto ``background``) and
re-encoded as plain JPEGs on the CPU side, counted in a warning; rows that do not decode at all are
skipped and counted, as in the CPU path. RandAugment is not available on this path.
"""

from __future__ import annotations

import io
import logging
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fovea.data.images import WHITE, exif_orientation, open_allowed, quiet, to_rgb, upright
from fovea.data.transforms import eval_resize_size, random_resized_crop_box

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8"


def center_crop_box(height: int, width: int, *, img_size: int, crop_pct: float) -> tuple[int, int, int, int]:
    """The evaluation view as a box in the original image: resize the short side to ``img_size / crop_pct``, then
    take the centre ``img_size`` square (timm's rule), expressed before the resize."""
    side = min(height, width) * img_size / eval_resize_size(img_size, crop_pct)
    side = max(1, min(round(side), height, width))
    return (height - side) // 2, (width - side) // 2, side, side


def _plain_jpeg(data: bytes, background: tuple[int, int, int] = WHITE) -> tuple[bytes, int, int, bool]:
    """``(jpeg bytes, height, width, re-encoded)``: the bytes as they are when they are a plain RGB/greyscale JPEG
    the device decoder handles, else the image decoded (:mod:`fovea.data.images`) and re-encoded (quality 95)."""
    with quiet(), open_allowed(data) as img:
        plain = img.format == "JPEG" and img.mode in ("RGB", "L") and data[:2] == JPEG_MAGIC
        if plain and exif_orientation(img) == 1:
            return data, img.height, img.width, False
        rgb = to_rgb(upright(img), background)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), rgb.height, rgb.width, True


class PlanCrops:
    """``map_batches`` callable: ``{"image": bytes, "label"}`` to ``{"jpeg", "box" (N, 4) int32, "flip", "label"}``.

    Only headers are read (and the few images the device decoder cannot take are re-encoded); the crop boxes are
    drawn here, on CPU, so the random state lives in Ray Data's tasks as it does for the CPU path.
    """

    def __init__(
        self,
        img_size: int,
        *,
        train: bool,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (0.75, 1.3333),
        hflip: float = 0.5,
        crop_pct: float = 0.875,
        seed: int | None = None,
        background: tuple[int, int, int] = WHITE,
    ) -> None:
        self.img_size, self.train, self.background = img_size, train, tuple(background)
        self.scale, self.ratio, self.hflip, self.crop_pct = tuple(crop_scale), tuple(crop_ratio), hflip, crop_pct
        self.rng = random.Random(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        jpegs, boxes, flips, labels, skipped, converted = [], [], [], [], 0, 0
        for data, label in zip(batch["image"], batch["label"], strict=True):
            try:
                jpeg, height, width, reencoded = _plain_jpeg(bytes(data), self.background)
            except Exception as err:  # any decoder error: skip the row, never the epoch
                skipped += 1
                log.warning("skipping an image that does not decode (%s); %d in this batch", err, skipped)
                continue
            converted += reencoded
            if self.train:
                box = random_resized_crop_box(height, width, scale=self.scale, ratio=self.ratio, rng=self.rng)
                flip = self.rng.random() < self.hflip
            else:
                box, flip = center_crop_box(height, width, img_size=self.img_size, crop_pct=self.crop_pct), False
            jpegs.append(jpeg)
            boxes.append(box)
            flips.append(flip)
            labels.append(label)
        if converted:
            log.warning("%d images in this batch were not plain JPEGs: re-encoded for the device decoder", converted)
        jpeg_column = np.empty(len(jpegs), dtype=object)
        jpeg_column[:] = jpegs
        return {
            "jpeg": jpeg_column,
            "box": np.asarray(boxes, dtype=np.int32).reshape(-1, 4),
            "flip": np.asarray(flips, dtype=bool),
            "label": np.asarray(labels, dtype=np.int64),
        }


def decode_batch(batch: dict[str, Any], *, img_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A :class:`PlanCrops` batch to ``{"image": uint8 (N, 3, S, S), "label"}`` on ``device``.

    All JPEGs are decoded in one ``decode_jpeg`` call (batched nvJPEG on a GPU), then each box is cut out, resized
    to ``img_size`` with antialiased bicubic interpolation (PIL's filter in the CPU path) and flipped as planned.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in batch["jpeg"]]
    labels = torch.as_tensor(np.asarray(batch["label"]), dtype=torch.int64)
    out = torch.empty((len(data), 3, img_size, img_size), dtype=torch.uint8, device=device)
    if not data:
        return {"image": out, "label": labels.to(device)}
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    for index, (image, box, flip) in enumerate(zip(images, batch["box"], batch["flip"], strict=True)):
        top, left, height, width = (int(v) for v in box)
        crop = image[None, :, top : top + height, left : left + width].float()
        resized = F.interpolate(crop, size=(img_size, img_size), mode="bicubic", antialias=True, align_corners=False)
        if flip:
            resized = resized.flip(-1)
        out[index] = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    return {"image": out, "label": labels.to(device, non_blocking=True)}
