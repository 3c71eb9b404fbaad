"""The evaluation job's decoded views of a prepared split (``fovea.evaluate.job`` scores them).

Views:

- ``single``: the centre view, as the training jobs' per-epoch validation sees it (resize the short side to
  ``img_size / crop_pct``, centre crop; for video the centre clip).
- ``multi``: images: ``data.num_spatial_crops`` crops spread evenly along the longer side of the resized image,
  centred on the shorter side (the 3-crop test of SlowFast, applied to images; a square image's crops go left to
  right, and with ``crop_pct=1`` they coincide); video: ``data.num_temporal_clips x data.num_spatial_crops`` clips.
  ``eval.flip_views`` adds each view's horizontal flip (on the scoring device). A sample's score is the mean of its
  views' logits.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fovea.data.images import WHITE, open_image

if TYPE_CHECKING:
    import ray.data

    from fovea.config import Config


def crop_offsets(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """``(top, left)`` of ``num_crops`` squares of ``size``, spread evenly along the longer side (the width of a
    square) and centred on the other; one crop is the centre crop (torchvision's rounding)."""
    offsets = []
    for index in range(num_crops):
        fraction = 0.5 if num_crops == 1 else index / (num_crops - 1)
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
        if height > width:
            top = int(round(fraction * (height - size)))
        else:
            left = int(round(fraction * (width - size)))
        offsets.append((top, left))
    return offsets


class DecodeImageViews:
    """``map_batches`` callable: encoded images to ``{"image": uint8 (N, V, 3, S, S), "label"}``, ``V = num_crops``.

    Each image is decoded and resized exactly as the single view is (``DecodeImages`` in evaluation: the rule of
    :mod:`fovea.data.images`, transparency composited onto ``background``; short side to ``img_size / crop_pct``,
    bicubic), then cut into ``num_crops`` squares (``crop_offsets``). Rows that do not decode are dropped with a
    warning, as in training.
    """

    def __init__(
        self, img_size: int, *, crop_pct: float, num_crops: int, background: tuple[int, int, int] = WHITE
    ) -> None:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2 as T

        from fovea.data.transforms import eval_resize_size

        self.img_size, self.num_crops, self.background = img_size, num_crops, tuple(background)
        resize = T.Resize(eval_resize_size(img_size, crop_pct), interpolation=InterpolationMode.BICUBIC)
        self.transform = T.Compose([resize, T.PILToTensor()])

    def views(self, data: bytes) -> np.ndarray:
        """The ``(V, 3, S, S)`` crops of one encoded image."""
        return self.views_of(open_image(data, background=self.background))

    def views_of(self, rgb: Any) -> np.ndarray:
        """The ``(V, 3, S, S)`` crops of one decoded RGB ``PIL.Image`` (what ``fovea.predict`` hands pixel arrays
        as)."""
        resized = self.transform(rgb)  # (3, H, W), short side img_size / crop_pct
        size = self.img_size
        height, width = resized.shape[-2:]
        crops = [
            resized[:, top : top + size, left : left + size]
            for top, left in crop_offsets(height, width, size, self.num_crops)
        ]
        return torch.stack(crops).numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import logging

        images, labels = [], []
        for data, label in zip(batch["image"], batch["label"], strict=True):
            try:
                images.append(self.views(data))
            except Exception as err:  # noqa: BLE001 - any decoder error: skip the row, never the evaluation
                logging.getLogger(__name__).warning("skipping an image that does not decode (%s)", err)
                continue
            labels.append(label)
        if not images:
            shape = (0, self.num_crops, 3, self.img_size, self.img_size)
            return {"image": np.zeros(shape, np.uint8), "label": np.zeros((0,), np.int64)}
        return {"image": np.stack(images), "label": np.asarray(labels, dtype=np.int64)}


def views_per_sample(cfg: Config, *, video: bool, multi: bool) -> int:
    """Views each sample is scored on (flips included)."""
    if not multi:
        return 1
    crops = cfg.data.num_spatial_crops * (cfg.data.num_temporal_clips if video else 1)
    return crops * (2 if cfg.eval.flip_views else 1)


def view_layout(cfg: Config, *, video: bool) -> str:
    """The multi-view layout in words, e.g. ``5 clips x 3 crops x 2 flips``."""
    clips, crops = cfg.data.num_temporal_clips, cfg.data.num_spatial_crops
    parts = [f"{clips} clip{'s' * (clips > 1)}"] if video else []
    parts.append(f"{crops} crop{'s' * (crops > 1)}")
    if cfg.eval.flip_views:
        parts.append("2 flips")
    return " x ".join(parts)


def build_eval_dataset(manifest: dict[str, Any], split: str, cfg: Config, *, multi: bool) -> ray.data.Dataset:
    """The decoded evaluation views of one split, uint8: images ``(N, 3, S, S)`` (single) or ``(N, V, 3, S, S)``,
    clips ``(N, 3, T, S, S)`` or ``(N, V, 3, T, S, S)``. Flips are added on the scoring device, not here."""
    from fovea.data.clips import DecodeClips, clip_columns
    from fovea.data.stream import clip_spec, read_split
    from fovea.data.transforms import DecodeImages

    batch = cfg.data.decode_batch_size
    if manifest.get("kind") == "video":
        spec = clip_spec(cfg.data, img_size=cfg.model.img_size, num_frames=cfg.data.num_frames)
        if not multi:
            spec = replace(spec, num_temporal_clips=1, num_spatial_crops=1)
        decode: Any = DecodeClips(
            spec,
            train=False,
            storage=manifest.get("storage", "encoded"),
            backend=cfg.data.video_backend,
            decode_threads=cfg.data.decode_threads,
        )
        rows = read_split(manifest, split, columns=clip_columns(manifest))
        views = spec.num_views
    else:
        if multi:
            decode = DecodeImageViews(
                cfg.model.img_size,
                crop_pct=cfg.data.crop_pct,
                num_crops=cfg.data.num_spatial_crops,
                background=cfg.data.alpha_rgb,
            )
        else:
            decode = DecodeImages(
                cfg.model.img_size, train=False, crop_pct=cfg.data.crop_pct, background=cfg.data.alpha_rgb
            )
        rows = read_split(manifest, split)
        views = cfg.data.num_spatial_crops if multi else 1
    # views multiply the decoded bytes per row: smaller batches keep blocks a sensible size
    return rows.map_batches(decode, batch_size=max(1, batch // views), batch_format="numpy")
