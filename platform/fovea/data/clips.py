"""Decode and augment video clips into uint8 ``(C, T, H, W)`` arrays, one Ray Data batch at a time.

:class:`DecodeClips` is the ``map_batches`` function of the streaming video datasets. For every row it picks the
clip's frame indices (:mod:`fovea.data.sampling`), decodes just those frames (:func:`fovea.data.video.decode_frames`,
or slices them out of a pre-decoded row), and applies one spatial transform to the whole clip, so every frame of
a clip gets the same scale, crop and flip: motion between frames stays intact.

Training: the short side is resized to ``img_size x U(scale)`` (SlowFast's short-side scale jitter, e.g.
[256, 320] for 224 crops is ``scale=(1.14, 1.43)``), then a random ``img_size`` square is cropped and flipped with
probability ``hflip``. Evaluation: the short side is resized to ``img_size / crop_pct`` (timm's rule) and
``num_spatial_crops`` squares are taken evenly along the long side (1 = centre; 3 = left/centre/right as in
SlowFast's 3-crop testing), for each of ``num_temporal_clips`` evenly spaced clips.

Training randomness is seeded per row from ``(seed, dataset execution, path, segment)``: the same seed gives the
same clips whatever the block layout or worker count, and every epoch (a new execution of the pipeline) draws
anew. Output is uint8, a quarter of float32's bytes; the training worker normalises on its device.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fovea.data.decode_failures import begin_batch, flush_batch, skip_row
from fovea.data.sampling import dense_indices, segment_indices
from fovea.data.video import BackendUnavailable, backend_order, check_backend, decode_frames, read_bytes
from fovea.errors import ConfigError

SAMPLINGS = ("dense", "segment")
STORAGES = ("encoded", "reference", "decoded")
# The columns DecodeClips reads from a prepared video dataset's shards (see clip_columns for ``backend``).
CLIP_COLUMNS = ["video", "path", "label", "num_frames", "start_frame", "width", "height"]
# The manifest key of datasets whose rows carry a ``backend`` column: the decoders preparation tried, in order.
BACKENDS_KEY = "video_backends"


def clip_columns(manifest: dict[str, Any]) -> list[str]:
    """The columns to read from a prepared video dataset: :data:`CLIP_COLUMNS`, plus each row's ``backend`` (the
    decoder that read the file when it was prepared) in datasets that record it."""
    return CLIP_COLUMNS + (["backend"] if manifest.get(BACKENDS_KEY) else [])


ROW_COLUMNS = (*CLIP_COLUMNS, "backend")  # what a row handed to DecodeClips may hold


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from videos and shaped.

    Attributes:
        img_size: side of the square crops.
        num_frames: frames per clip (the model's ``num_frames``).
        frame_interval: distance between sampled frames (dense sampling).
        sampling: ``dense`` (a window of ``num_frames x frame_interval``; MViT/SlowFast) or ``segment`` (one frame
            per equal segment of the whole video; TSN/ViViT).
        scale: training short-side jitter range, as multiples of ``img_size``.
        hflip: training horizontal-flip probability (0 for datasets whose classes are left/right mirror images).
        crop_pct: evaluation crop as a fraction of the resized short side.
        num_temporal_clips: evaluation clips per video, evenly spaced in time.
        num_spatial_crops: evaluation crops per clip, evenly spaced along the long side.
    """

    img_size: int
    num_frames: int
    frame_interval: int = 1
    sampling: str = "dense"
    scale: tuple[float, float] = (1.0, 1.25)
    hflip: float = 0.0
    crop_pct: float = 0.875
    num_temporal_clips: int = 1
    num_spatial_crops: int = 1

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.num_frames < 1 or self.frame_interval < 1 or self.img_size < 1:
            raise ValueError("img_size, num_frames and frame_interval must be at least 1")
        if not 0 < self.scale[0] <= self.scale[1] or self.scale[0] * self.img_size < 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if self.num_temporal_clips < 1 or self.num_spatial_crops < 1:
            raise ValueError("num_temporal_clips and num_spatial_crops must be at least 1")

    @property
    def num_views(self) -> int:
        """Evaluation views per video."""
        return self.num_temporal_clips * self.num_spatial_crops

    def frame_indices(self, video_frames: int, rng: np.random.Generator | None, clip_index: int = 0) -> np.ndarray:
        """The clip's frame numbers within a video (or segment) of ``video_frames`` frames."""
        num_clips = 1 if rng is not None else self.num_temporal_clips
        if self.sampling == "segment":
            return segment_indices(
                video_frames, num_frames=self.num_frames, rng=rng, clip_index=clip_index, num_clips=num_clips
            )
        return dense_indices(
            video_frames,
            num_frames=self.num_frames,
            frame_interval=self.frame_interval,
            rng=rng,
            clip_index=clip_index,
            num_clips=num_clips,
        )


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """``(height, width)`` of a frame resized so its shorter side is ``short``, aspect kept (at least ``short``)."""
    factor = short / min(height, width)
    return max(short, round(height * factor)), max(short, round(width * factor))


def resize_short_side(clip: torch.Tensor, short: int) -> torch.Tensor:
    """``(T, C, H, W)`` uint8 resized so its shorter side is ``short`` (bilinear, antialiased, aspect kept)."""
    height, width = clip.shape[-2:]
    size = list(resized_size(height, width, short))
    if size == [height, width]:
        return clip
    return TF.resize(clip, size, interpolation=InterpolationMode.BILINEAR, antialias=True)


def train_plan(height: int, width: int, spec: ClipSpec, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The training augmentation of one clip of ``height x width`` frames: ``(short side, top, left, flip)``."""
    short = max(spec.img_size, round(spec.img_size * rng.uniform(*spec.scale)))
    resized_height, resized_width = resized_size(height, width, short)
    top = int(rng.integers(0, resized_height - spec.img_size + 1))
    left = int(rng.integers(0, resized_width - spec.img_size + 1))
    flip = int(spec.hflip > 0 and rng.random() < spec.hflip)
    return short, top, left, flip


def eval_plans(height: int, width: int, spec: ClipSpec) -> list[tuple[int, int, int, int]]:
    """The ``num_spatial_crops`` evaluation crops of a clip: ``(short side, top, left, 0)`` squares spread along the
    long side of the frames resized to ``img_size / crop_pct`` (one crop: the centre)."""
    size = spec.img_size
    short = max(size, int(size / spec.crop_pct))
    resized_height, resized_width = resized_size(height, width, short)
    plans = []
    for index in range(spec.num_spatial_crops):
        # one crop sits in the centre; several spread from one end of the long side to the other
        fraction = 0.5 if spec.num_spatial_crops == 1 else index / (spec.num_spatial_crops - 1)
        top, left = (resized_height - size) // 2, (resized_width - size) // 2
        if resized_height > resized_width:
            top = round(fraction * (resized_height - size))
        else:
            left = round(fraction * (resized_width - size))
        plans.append((short, top, left, 0))
    return plans


def cut_clip(clip: torch.Tensor, plan: Sequence[int], size: int) -> torch.Tensor:
    """``(T, 3, H, W)`` uint8 frames (on any device) to the ``(3, T, size, size)`` view that ``plan`` (from
    :func:`train_plan` or :func:`eval_plans`) describes: resized, cropped and flipped alike in every frame."""
    short, top, left, flip = (int(value) for value in plan)
    clip = resize_short_side(clip, short)
    clip = clip[..., top : top + size, left : left + size]
    if flip:
        clip = clip.flip(-1)
    return clip.permute(1, 0, 2, 3).contiguous()


def train_clip(frames: np.ndarray, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """One augmented training clip: frames ``(T, H, W, 3)`` to uint8 ``(3, T, S, S)``, one transform for all frames."""
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W): the frames are a batch to torchvision
    return cut_clip(clip, train_plan(frames.shape[1], frames.shape[2], spec, rng), spec.img_size).numpy()


def eval_crops(frames: np.ndarray, spec: ClipSpec) -> list[np.ndarray]:
    """The evaluation crops of one clip: ``num_spatial_crops`` uint8 ``(3, T, S, S)`` squares along the long side."""
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)
    resized = resize_short_side(clip, max(spec.img_size, int(spec.img_size / spec.crop_pct)))  # once for all crops
    plans = eval_plans(frames.shape[1], frames.shape[2], spec)
    return [cut_clip(resized, (min(resized.shape[-2:]), *plan[1:]), spec.img_size).numpy() for plan in plans]


def usable(backend: str) -> None:
    """Raise :class:`~fovea.errors.ConfigError` (a line naming the fix) when ``data.video_backend`` cannot run here."""
    try:
        check_backend(backend)
    except BackendUnavailable as err:
        raise ConfigError(f"data.video_backend={backend}: {err}") from None


def execution_index() -> int:
    """Which execution of the Ray Data pipeline this task belongs to (0, 1, ... = epochs); 0 outside Ray Data."""
    try:
        from ray.data import DataContext

        # Ray Data counts executions here and ships the context to its tasks; its own reseeding random() and
        # FileShuffleConfig use the same private counter.
        return int(getattr(DataContext.get_current(), "_execution_idx", 0) or 0)
    except ImportError:  # pragma: no cover - Ray is a dependency, but the transforms do not need it
        return 0


class DecodeClips:
    """``map_batches`` callable: rows of a prepared video dataset to ``{"video": uint8, "label": int64}``.

    Training yields one clip per video, ``(N, 3, T, S, S)``. Evaluation yields ``(N, 3, T, S, S)`` for a single
    view and ``(N, V, 3, T, S, S)`` for ``V = num_temporal_clips x num_spatial_crops`` views, which
    ``fovea.train.loop.evaluate`` scores by averaging each video's logits.

    Each row is decoded with ``backend`` unless its ``backend`` column says preparation found only another one reads
    the file; when that fails, with the other backends (:func:`fovea.data.video.backend_order`). Rows that no longer
    decode with any (a file moved or damaged after preparation, damage the probe did not see) are dropped with a
    warning naming the file and counted in the run's tally (:mod:`fovea.data.decode_failures`), instead of failing
    the task and the epoch.

    Args:
        spec: the clip geometry and augmentation.
        train: random clips and augmentation, or the deterministic evaluation views.
        storage: how the shards hold videos: ``encoded`` bytes, a ``reference`` (path or URI) to the file, or
            ``decoded`` uint8 frames (``pipelines/prepare_videos.py --pre-decode``).
        backend: ``decord``, ``pyav`` or ``torchcodec`` (encoded and referenced videos): ``data.video_backend``;
            torchcodec without FFmpeg's libraries is a :class:`~fovea.errors.ConfigError` naming the fix.
        decode_threads: decoder threads per video (decord, torchcodec).
        seed: seed of the training clips and augmentation.
    """

    def __init__(
        self,
        spec: ClipSpec,
        *,
        train: bool,
        storage: str = "encoded",
        backend: str = "decord",
        decode_threads: int = 1,
        seed: int = 0,
    ) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        backend_order(backend)  # an unknown backend is an error here, not a skipped row in every batch
        if storage != "decoded":
            usable(backend)
        self.spec, self.train, self.storage = spec, train, storage
        self.backend, self.decode_threads, self.seed = backend, decode_threads, seed

    def _frames(self, row: dict[str, Any], indices: np.ndarray) -> np.ndarray:
        """Frames ``(len(indices), H, W, 3)`` of one row; ``indices`` count from the row's first frame."""
        if self.storage == "decoded":
            stored = np.frombuffer(row["video"], dtype=np.uint8)
            return stored.reshape(int(row["num_frames"]), int(row["height"]), int(row["width"]), 3)[indices]
        data = row["video"] if self.storage == "encoded" else read_bytes(row["path"])
        offset = int(row.get("start_frame") or 0)  # a segment of a longer file
        backends = backend_order(self.backend, row.get("backend") or None)
        return decode_frames(data, indices + offset, backend=backends, num_threads=self.decode_threads)

    def views(self, row: dict[str, Any], execution: int = 0) -> list[np.ndarray]:
        """The uint8 ``(3, T, S, S)`` clips of one row: one for training, ``num_views`` for evaluation."""
        spec, video_frames = self.spec, int(row["num_frames"])
        if self.train:
            key = zlib.crc32(str(row["path"]).encode("utf-8"))
            rng = np.random.default_rng([self.seed, execution, key, int(row.get("start_frame") or 0)])
            return [train_clip(self._frames(row, spec.frame_indices(video_frames, rng)), spec, rng)]
        clips = [spec.frame_indices(video_frames, None, k) for k in range(spec.num_temporal_clips)]
        frames = self._frames(row, np.concatenate(clips))  # decode every view's frames in one pass
        per_clip = np.split(frames, spec.num_temporal_clips)
        return [crop for clip in per_clip for crop in eval_crops(clip, spec)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        execution = execution_index() if self.train else 0
        columns = [name for name in ROW_COLUMNS if name in batch]
        videos, labels = [], []
        begin_batch()
        for index, values in enumerate(zip(*(batch[name] for name in columns), strict=True)):
            row = dict(zip(columns, values, strict=True))
            try:
                views, label = self.views(row, execution), int(row["label"])
            except Exception as err:  # noqa: BLE001 - any decoder, file or value error: skip the row, never the epoch
                skip_row("video", batch, index, err)
                continue
            videos.append(views[0] if len(views) == 1 else np.stack(views))
            labels.append(label)
        flush_batch()
        spec = self.spec
        shape = (spec.num_views,) if not self.train and spec.num_views > 1 else ()
        shape += (3, spec.num_frames, spec.img_size, spec.img_size)
        if not videos:
            return {"video": np.zeros((0, *shape), np.uint8), "label": np.zeros((0,), np.int64)}
        return {"video": np.stack(videos), "label": np.asarray(labels, dtype=np.int64)}
