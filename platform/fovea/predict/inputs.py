"""What a model is fed when it predicts: raw inputs (encoded image or video bytes, file paths, uint8 pixel arrays)
decoded into its evaluation views by the same code evaluation uses (``fovea.data.eval_views.DecodeImageViews`` for
images; ``fovea.data.clips.DecodeClips`` / ``eval_crops`` for video), with the model's own recorded settings
(``img_size``, ``crop_pct``, mean/std, transparency background, and for video ``num_frames``, ``frame_interval``,
``sampling``, clips x crops).

No MLflow, no Ray: the registered pyfunc (``fovea.track.pyfunc_code``), ``jobs/predict.py`` and ``fovea predict``
all decode through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fovea.data.images import WHITE

VIEW_CHOICES = ("default", "single", "multi")


@dataclass(frozen=True)
class InputSpec:
    """How one model's inputs are decoded and shaped.

    Attributes:
        video: the model takes clips ``(3, T, S, S)``, else images ``(3, S, S)``.
        img_size: side of the square crops.
        mean: normalisation mean (0-1 scale).
        std: normalisation std.
        crop_pct: the centre crop as a fraction of the resized short side.
        background: RGB that transparent pixels are composited onto.
        num_frames: frames per clip (video).
        frame_interval: distance between sampled frames (dense sampling).
        sampling: ``dense`` or ``segment``.
        num_temporal_clips: clips per video (multi-view).
        num_spatial_crops: crops per clip or image (multi-view).
        flip: add each view's horizontal mirror image.
        backends: video decoders to try, in order.
    """

    video: bool
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 0.875
    background: tuple[int, int, int] = WHITE
    num_frames: int = 0
    frame_interval: int = 1
    sampling: str = "dense"
    num_temporal_clips: int = 1
    num_spatial_crops: int = 1
    flip: bool = False
    backends: tuple[str, ...] = field(default=("decord", "pyav"))

    @property
    def num_views(self) -> int:
        """Views each input is scored on (flips included)."""
        clips = self.num_temporal_clips if self.video else 1
        return clips * self.num_spatial_crops * (2 if self.flip else 1)

    @property
    def layout(self) -> str:
        """The views in words, e.g. ``5 clips x 1 crop``."""
        parts = [f"{self.num_temporal_clips} clip{'s' * (self.num_temporal_clips > 1)}"] if self.video else []
        parts.append(f"{self.num_spatial_crops} crop{'s' * (self.num_spatial_crops > 1)}")
        if self.flip:
            parts.append("2 flips")
        return " x ".join(parts)


def spec_from_info(info: dict[str, Any], *, video: bool, views: str = "default", **overrides: Any) -> InputSpec:
    """The ``InputSpec`` a model's recorded facts imply (``fovea_model.json``, ``LoadedModel.inputs``).

    Args:
        info: ``img_size``, ``mean``, ``std`` (required) and what else was recorded (``crop_pct``,
            ``alpha_background``, ``num_frames``, ``frame_interval``, ``sampling``, ``num_temporal_clips``,
            ``num_spatial_crops``, ``hflip`` or ``flip_views``).
        video: whether the model takes clips.
        views: ``single`` (the centre view, as validation), ``multi`` (the recorded clips x crops, flips), or
            ``default``: multi for a video model, single for an image model.
        overrides: ``InputSpec`` fields set by the caller (a job's flags); None values are ignored.

    Raises:
        ValueError: one line: an unknown ``views``, or info without ``img_size``/``mean``/``std``.
    """
    from fovea.config.schema import parse_colour

    if views not in VIEW_CHOICES:
        raise ValueError(f"views must be one of {', '.join(VIEW_CHOICES)}, not {views!r}")
    missing = [key for key in ("img_size", "mean", "std") if not info.get(key)]
    if missing:
        raise ValueError(f"the model records no {', '.join(missing)}: its input is unknown")
    background = info.get("alpha_background") or "white"
    values: dict[str, Any] = {
        "video": video,
        "img_size": int(info["img_size"]),
        "mean": tuple(float(v) for v in info["mean"]),
        "std": tuple(float(v) for v in info["std"]),
        "crop_pct": float(info.get("crop_pct") or 0.875),
        "background": parse_colour(background) if isinstance(background, str) else tuple(background),
    }
    if video:
        values["num_frames"] = int(info.get("num_frames") or 16)
        values["frame_interval"] = int(info.get("frame_interval") or 1)
        values["sampling"] = str(info.get("sampling") or "dense")
    multi = views == "multi" or (views == "default" and video)
    if multi:
        values["num_temporal_clips"] = int(info.get("num_temporal_clips") or 1) if video else 1
        values["num_spatial_crops"] = int(info.get("num_spatial_crops") or 1)
        # flips only for a model trained with them (evaluation's default, eval.flip_views)
        values["flip"] = bool(info.get("flip_views", float(info.get("hflip") or 0) > 0))
    values.update({key: value for key, value in overrides.items() if value is not None})
    if not multi:
        values.update(num_temporal_clips=1, num_spatial_crops=1, flip=False)
    return InputSpec(**values)


def read_input(item: Any) -> Any:
    """``item`` as the decoders take it: bytes stay bytes, a path (``str``/``Path``) is read, a uint8 array stays an
    array.

    Raises:
        ValueError: one line: a missing or unreadable file, or a value of another kind.
    """
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, str | Path):
        from fovea.data.video import read_bytes

        try:
            return read_bytes(str(item))
        except OSError as err:
            raise ValueError(f"{item}: cannot be read ({err.strerror or type(err).__name__})") from None
    raise ValueError(f"an input of type {type(item).__name__}: give encoded bytes, a file path or a uint8 array")


class ViewMaker:
    """One input to its uint8 views, ``(V, 3, S, S)`` for images or ``(V, 3, T, S, S)`` for clips (flips are added
    where the model runs, as in evaluation)."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        if spec.video:
            from fovea.data.clips import ClipSpec, DecodeClips

            self.clips = ClipSpec(
                img_size=spec.img_size,
                num_frames=spec.num_frames,
                frame_interval=spec.frame_interval,
                sampling=spec.sampling,
                crop_pct=spec.crop_pct,
                num_temporal_clips=spec.num_temporal_clips,
                num_spatial_crops=spec.num_spatial_crops,
            )
            self.decoder: Any = DecodeClips(self.clips, train=False, backend=spec.backends[0])
        else:
            from fovea.data.eval_views import DecodeImageViews

            self.decoder = DecodeImageViews(
                spec.img_size, crop_pct=spec.crop_pct, num_crops=spec.num_spatial_crops, background=spec.background
            )

    def __call__(self, item: Any) -> np.ndarray:
        """The views of one input (bytes, a path or a uint8 array).

        Raises:
            ValueError: one line saying why the input cannot be used (unreadable, not an image/video, wrong shape).
        """
        data = read_input(item)
        if self.spec.video:
            return self._clip_views(data)
        if isinstance(data, np.ndarray):
            return self.decoder.views_of(pixels_to_image(data, self.spec.background))
        from fovea.data.images import UnusableImage

        try:
            return self.decoder.views(data)
        except UnusableImage:
            raise
        except (OSError, SyntaxError) as err:  # PIL's errors for bytes that are no image
            raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from None

    def _clip_views(self, data: Any) -> np.ndarray:
        from fovea.data.clips import eval_crops
        from fovea.data.video import probe_video

        spec = self.clips
        if isinstance(data, np.ndarray):  # decoded frames (T, H, W, 3)
            if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
                raise ValueError(f"video frames must be uint8 (T, H, W, 3), not {data.dtype} {tuple(data.shape)}")
            picks = [spec.frame_indices(len(data), None, k) for k in range(spec.num_temporal_clips)]
            clips = [np.minimum(index, len(data) - 1) for index in picks]
            return np.stack([crop for index in clips for crop in eval_crops(data[index], spec)])
        info = probe_video(data, backends=self.spec.backends)  # BadVideo (a ValueError): one line
        row = {"video": data, "num_frames": info.num_frames, "path": "", "backend": info.backend}
        return np.stack(self.decoder.views(row))


def pixels_to_image(pixels: np.ndarray, background: tuple[int, int, int] = WHITE) -> Any:
    """A uint8 ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array as an RGB ``PIL.Image`` (alpha composited onto
    ``background``, as decoded files are).

    Raises:
        ValueError: another dtype or shape.
    """
    from PIL import Image

    from fovea.data.images import to_rgb

    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        raise ValueError(
            f"image pixels must be uint8 (H, W), (H, W, 3) or (H, W, 4), not {pixels.dtype} {tuple(pixels.shape)}"
        )
    if min(pixels.shape[:2]) < 1:
        raise ValueError(f"an empty image {tuple(pixels.shape)}")
    return to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), background)


def dataset_example(dataset_dir: str | Path, *, video: bool) -> bytes | None:
    """The encoded bytes of one file of a prepared dataset (its val split's first row, else train's): a real input
    example for a model trained on it. None when the shards hold no encoded files (decoded or referenced videos)
    or cannot be read."""
    import pyarrow.parquet as pq

    from fovea.data import load_manifest

    column = "video" if video else "image"
    try:
        manifest = load_manifest(Path(dataset_dir))
        if video and manifest.get("storage", "encoded") != "encoded":
            return None
        for split in ("val", "train"):
            shards = manifest["splits"].get(split, {}).get("shards") or []
            if shards:
                value = pq.ParquetFile(shards[0]).read_row_group(0, columns=[column]).column(column)[0].as_py()
                return bytes(value) if value else None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return None
