"""Decode and augment encoded images into uint8 CHW arrays, one Ray Data batch at a time.

Everything here runs on CPU in Ray Data's ``map_batches`` tasks and emits uint8: a quarter of the bytes of
float32 to move to the training worker, which converts and normalises on its own device (see
``fovea.train.loop.Normalize``).
"""

from __future__ import annotations

import logging
import math
import os
import random
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from fovea.data.decode_failures import skip_row
from fovea.data.images import WHITE, is_jpeg, open_allowed, open_image, quiet, to_rgb, upright

log = logging.getLogger(__name__)


def eval_resize_size(img_size: int, crop_pct: float) -> int:
    """The shorter side images are resized to before the centre crop (timm's ``crop_pct`` rule)."""
    return int(math.floor(img_size / crop_pct))


def random_resized_crop_box(
    height: int, width: int, *, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box ``(top, left, h, w)``: area fraction from ``scale``, log-uniform aspect from ``ratio``.

    Ten tries at a box that fits, then the centre crop at the nearest allowed aspect ratio (the rule of Szegedy et
    al.'s Inception training, as torchvision implements it).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


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
    them, instead of failing the epoch. Every image is decoded by :mod:`fovea.data.images`'s rule (allowed formats
    only, EXIF orientation, 8-bit pixels, transparency composited onto ``background``), as in evaluation.

    Training without RandAugment takes a direct path, about 22% less CPU per image than torchvision's pipeline
    (1.21 against 1.56 ms for 224 px crops of 256 px JPEGs, one core; benchmarks/RESULTS.md, issue 9):
    the crop box is drawn first (torchvision's RandomResizedCrop rule), then one ``Image.resize(box=...)`` crops,
    scales and antialiases in a single pass, with no copy for EXIF or mode conversion where none is needed. When
    the box is at least twice the output on both sides, a JPEG is decoded at a reduced scale (libjpeg's DCT
    scaling, 1/2 to 1/8, never below the output size), as image loaders built for throughput do: less to decode
    and less to resize. Evaluation and RandAugment keep torchvision's pipeline.
    """

    def __init__(self, img_size: int, *, train: bool, background: tuple[int, int, int] = WHITE, **augment: Any) -> None:
        """``background``: the RGB colour transparent pixels are composited onto (``data.alpha_background``);
        ``augment``: the keyword arguments of :func:`build_image_transform`."""
        self.img_size = img_size
        self.background = tuple(background)
        self.transform = build_image_transform(img_size, train=train, **augment)
        steps = self.transform.transforms
        self.direct = train and not any(isinstance(step, T.RandAugment) for step in steps)
        crop = next((step for step in steps if isinstance(step, T.RandomResizedCrop)), None)
        self.crop_scale, self.crop_ratio = (tuple(crop.scale), tuple(crop.ratio)) if crop else ((1.0, 1.0), (1.0, 1.0))
        self.hflip = next((step.p for step in steps if isinstance(step, T.RandomHorizontalFlip)), 0.0)
        self._rng: random.Random | None = None  # made in the process that decodes (a task or DataLoader worker)
        self._rng_pid = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rng": None}  # each process that unpickles this draws its own crops

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = self.img_size
        out = np.empty((len(batch["label"]), 3, size, size), np.uint8)
        labels, skipped = [], 0
        for data, label in zip(batch["image"], batch["label"], strict=True):
            try:
                if self.direct:  # HWC pixels written straight into the batch as CHW: no stacking copy
                    out[len(labels)] = self._direct(data).transpose(2, 0, 1)
                else:
                    out[len(labels)] = self._torchvision(data).numpy()
            except Exception as err:  # any decoder error: skip the row, never the epoch
                skipped += 1
                skip_row("image", batch, len(labels) + skipped - 1, err)  # warns naming the file; counted per batch
                continue
            labels.append(label)
        return {"image": out[: len(labels)], "label": np.asarray(labels, dtype=np.int64)}

    def _torchvision(self, data: bytes) -> torch.Tensor:
        return self.transform(open_image(data, background=self.background))

    def _direct(self, data: bytes) -> np.ndarray:
        """One training view as uint8 HWC: random box, optional reduced-scale JPEG decode, one resize, flip."""
        if self._rng is None or self._rng_pid != os.getpid():
            # seeded from the OS in each process that decodes, forked DataLoader workers included (a fork copies the
            # parent's generator): no two processes draw the same crops
            self._rng, self._rng_pid = random.Random(), os.getpid()
        size = self.img_size
        with quiet(), open_allowed(data) as img:
            source = upright(img)  # decodes and turns it when EXIF says so; rare outside camera photos
            width, height = source.size
            top, left, h, w = random_resized_crop_box(
                height, width, scale=self.crop_scale, ratio=self.crop_ratio, rng=self._rng
            )
            box: tuple[float, float, float, float] = (left, top, left + w, top + h)
            factor = min(w, h) // size
            if factor >= 2 and source is img and is_jpeg(img):
                # the decoder picks the largest of 1/2, 1/4, 1/8 that keeps the image at least this big
                img.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
                sx, sy = img.size[0] / width, img.size[1] / height
                box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
            rgb = to_rgb(source, self.background)  # a plain RGB JPEG: itself, not decoded yet
            view = rgb.resize((size, size), Image.Resampling.BICUBIC, box=box)
        if self.hflip > 0 and self._rng.random() < self.hflip:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(view)
