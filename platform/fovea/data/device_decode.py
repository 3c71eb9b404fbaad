"""Decoding on the training device: JPEGs (``data.jpeg_decode=device``: nvJPEG on a GPU, libjpeg on a CPU) and
video clips (``data.video_decode=device``: TorchCodec on NVDEC on a GPU, on FFmpeg's CPU decoders on a CPU).

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


# --- video clips (data.video_decode=device) -------------------------------------------------------------------------
#
# Raw-video training is decode-bound on CPUs (issue 25: decord gave 87 random 16x4 clips/s in 16 processes on the
# H200 host against 148 clips/s of MViT-B training). With this option the Ray Data tasks only read each video's
# bytes and draw its clip (frame numbers) and augmentation (short side, crop, flip) exactly as DecodeClips would
# (PlanClips); the training worker decodes those frames with TorchCodec on its own device (NVDEC on a GPU) and
# resizes, crops and flips there (decode_clip_batch), with the same functions as the CPU path, so on a CPU the two
# paths give the same clips. A row TorchCodec cannot decode there is decoded on the worker's CPU by the row's other
# backends; one that no backend decodes is skipped and counted, as in the CPU path.


class PlanClips:
    """``map_batches`` callable: prepared video rows to ``{"video": bytes, "indices": (N, K) int64, "plans": (N, V,
    4) int32, "backends": str, "label", "path"}``: the frames to decode (every view's, ``K = clips x num_frames``,
    counted from the file's first frame), each view's ``(short side, top, left, flip)`` (:func:`~fovea.data.clips.
    train_plan`, :func:`~fovea.data.clips.eval_plans`), and the decoders to try in order (``torchcodec`` first).

    Args: those of :class:`~fovea.data.clips.DecodeClips` (``storage`` ``encoded`` or ``reference``).
    """

    def __init__(self, spec: Any, *, train: bool, storage: str = "encoded", backend: str = "decord", seed: int = 0):
        from fovea.data.video import BackendUnavailable, backend_order, check_backend
        from fovea.errors import ConfigError

        if storage not in ("encoded", "reference"):
            raise ConfigError(f"data.video_decode=device decodes encoded videos; this dataset's storage is {storage}")
        backend_order(backend)  # an unknown backend is an error here, not a skipped row in every batch
        try:
            check_backend("torchcodec")
        except BackendUnavailable as err:
            raise ConfigError(f"data.video_decode=device decodes with torchcodec: {err}") from None
        self.spec, self.train, self.storage, self.backend, self.seed = spec, train, storage, backend, seed

    def plan(self, row: dict[str, Any], execution: int) -> tuple[bytes, np.ndarray, np.ndarray, str]:
        """``(bytes, frame numbers, view plans, backends)`` of one row, drawn as DecodeClips.views draws them."""
        import zlib

        from fovea.data.clips import eval_plans, train_plan
        from fovea.data.video import backend_order, read_bytes

        spec, frames, height, width = self.spec, int(row["num_frames"]), int(row["height"]), int(row["width"])
        offset = int(row.get("start_frame") or 0)
        if self.train:
            key = zlib.crc32(str(row["path"]).encode("utf-8"))
            rng = np.random.default_rng([self.seed, execution, key, offset])
            indices = spec.frame_indices(frames, rng)
            plans = [train_plan(height, width, spec, rng)]
        else:
            indices = np.concatenate([spec.frame_indices(frames, None, k) for k in range(spec.num_temporal_clips)])
            plans = eval_plans(height, width, spec) * spec.num_temporal_clips
        data = bytes(row["video"]) if self.storage == "encoded" else read_bytes(row["path"])
        # TorchCodec first (it comes last in probe order, so a row's recorded backend never rules it out), then the
        # row's other backends, for the worker's CPU when TorchCodec fails on the device
        rest = [name for name in backend_order(self.backend, row.get("backend") or None) if name != "torchcodec"]
        return data, indices + offset, np.asarray(plans, dtype=np.int32), ",".join(["torchcodec", *rest])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from fovea.data.clips import ROW_COLUMNS, execution_index
        from fovea.data.decode_failures import begin_batch, flush_batch, skip_row

        execution = execution_index() if self.train else 0
        columns = [name for name in ROW_COLUMNS if name in batch]
        kept: dict[str, list[Any]] = {"video": [], "indices": [], "plans": [], "backends": [], "label": [], "path": []}
        begin_batch()
        for index, values in enumerate(zip(*(batch[name] for name in columns), strict=True)):
            row = dict(zip(columns, values, strict=True))
            try:
                data, indices, plans, backends = self.plan(row, execution)
                label = int(row["label"])
            except Exception as err:  # noqa: BLE001 - a file gone or a bad value: skip the row, never the epoch
                skip_row("video", batch, index, err)
                continue
            for name, value in zip(kept, (data, indices, plans, backends, label, str(row["path"])), strict=True):
                kept[name].append(value)
        flush_batch()
        k = self.spec.num_frames * (1 if self.train else self.spec.num_temporal_clips)
        v = 1 if self.train else self.spec.num_views
        out = {name: _objects(kept[name]) for name in ("video", "backends", "path")}
        out["indices"] = np.asarray(kept["indices"], dtype=np.int64).reshape(-1, k)
        out["plans"] = np.asarray(kept["plans"], dtype=np.int32).reshape(-1, v, 4)
        out["label"] = np.asarray(kept["label"], dtype=np.int64)
        return out


def _objects(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def decode_clip_batch(
    batch: dict[str, Any], *, num_frames: int, img_size: int, device: torch.device, decode_threads: int = 1
) -> dict[str, torch.Tensor]:
    """A :class:`PlanClips` batch to ``{"video": uint8 (N, 3, T, S, S) or (N, V, 3, T, S, S), "label"}`` on ``device``.

    Each row's frames are decoded on ``device`` by TorchCodec (``cuda``: NVDEC), then each view is resized, cropped
    and flipped there (:func:`~fovea.data.clips.cut_clip`). A row TorchCodec does not decode is decoded on the CPU
    by its other backends; a row none decodes is skipped and counted (:mod:`fovea.data.decode_failures`).
    """
    from fovea.data.clips import cut_clip
    from fovea.data.decode_failures import begin_batch, flush_batch, skip_row
    from fovea.data.video import BadVideo, decode_frames, decode_torchcodec

    target = "cuda" if device.type == "cuda" else "cpu"
    views = int(batch["plans"].shape[1]) if len(batch["plans"]) else 1
    videos, labels = [], []
    begin_batch()
    for index, (data, indices, plans, backends, label) in enumerate(
        zip(batch["video"], batch["indices"], batch["plans"], batch["backends"], batch["label"], strict=True)
    ):
        order = str(backends).split(",")
        try:
            try:
                frames = decode_torchcodec(data, indices, num_threads=decode_threads, device=target)
            except BadVideo as err:
                if len(order) < 2:
                    raise
                log.debug("torchcodec on %s: %s; trying %s", target, err, ", ".join(order[1:]))
                cpu = decode_frames(data, indices, backend=order[1:], num_threads=decode_threads)
                frames = torch.from_numpy(cpu).to(device)
            clips = frames.to(device).permute(0, 3, 1, 2).split(num_frames)  # (T, 3, H, W) per temporal clip
            per_clip = len(plans) // len(clips)
            cut = [cut_clip(clips[k // per_clip], plan, img_size) for k, plan in enumerate(plans)]
        except Exception as err:  # noqa: BLE001 - skip the row, never the epoch
            skip_row("video", batch, index, err)
            continue
        videos.append(cut[0] if views == 1 else torch.stack(cut))
        labels.append(int(label))
    flush_batch()
    shape = ((views,) if views > 1 else ()) + (3, num_frames, img_size, img_size)
    video = torch.stack(videos) if videos else torch.zeros((0, *shape), dtype=torch.uint8, device=device)
    return {"video": video, "label": torch.as_tensor(labels, dtype=torch.int64).to(device)}
