"""Reading encoded videos: probe a file's metadata and prove it decodes, with a one-line reason when it does not.

decord reads from memory (``VideoReader(io.BytesIO(data))``), so the same code serves files on disk and rows of
Parquet shards. Probing decodes the first and the last frame: a truncated file usually still opens (its header
is intact) and fails only on the frames that were cut off.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


class BadVideo(ValueError):
    """A video that cannot be used; the message is the one-line reason recorded in a manifest."""


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns of a video."""

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int


def probe_video(data: bytes, *, min_frames: int = 1) -> VideoInfo:
    """Open ``data`` with decord, decode its first and last frame, and return its metadata.

    Args:
        data: the encoded file's bytes (MP4, AVI, WebM, ... whatever FFmpeg in decord reads).
        min_frames: fewer decodable frames than this is an error (``too short``).

    Raises:
        BadVideo: empty, not a video, truncated, too short, or frames decord returns in the wrong shape.
    """
    import decord

    if not data:
        raise BadVideo("empty file (0 bytes)")
    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    except Exception as err:  # noqa: BLE001 - decord raises its own DECORDError or RuntimeError subclasses
        kind = "corrupt or truncated video" if data[4:8] == b"ftyp" else "not a readable video"  # ftyp: MP4/MOV
        raise BadVideo(f"{kind} ({_first_line(err)})") from None
    try:
        num_frames = len(reader)
        if num_frames == 0:
            raise BadVideo("no video frames")
        first = reader[0].shape
        try:
            last = reader[num_frames - 1].shape
        except Exception as err:  # noqa: BLE001
            raise BadVideo(
                f"truncated: frame {num_frames - 1} of {num_frames} does not decode ({_first_line(err)})"
            ) from None
        height, width = first[:2]
        if first[2:] != (3,) or last != first:
            # decord 0.6 mis-sizes frames of some widths (16 and 48 pixels give 6 and 4 channels)
            raise BadVideo(f"decord returns frames of shape {first}, not ({height}, {width}, 3)")
        if num_frames < min_frames:
            raise BadVideo(f"too short: {num_frames} frames, at least {min_frames} needed")
        fps = float(reader.get_avg_fps())
        return VideoInfo(
            num_frames=num_frames,
            fps=fps,
            duration=num_frames / fps if fps > 0 else 0.0,
            width=int(width),
            height=int(height),
        )
    finally:
        del reader  # decord keeps decoder state (and memory) until the reader is freed


def _first_line(err: BaseException) -> str:
    # decord's messages carry a timestamp and its source location, then the complaint, sometimes over lines
    lines = [_DECORD_PREFIX.sub("", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    return (lines[-1] if lines else type(err).__name__)[:200]
