"""Reading encoded videos: probe a file's metadata, prove it decodes, and decode the frames of a clip.

decord reads from memory (``VideoReader(io.BytesIO(data))``), so the same code serves files on disk and rows of
Parquet shards. Probing decodes the first and the last frame: a truncated file usually still opens (its header
is intact) and fails only on the frames that were cut off.

Two decoders read clips (``data.video_backend``): decord, which seeks straight to the wanted frames and decodes
them with its own threads; and PyAV, which decodes in order from the first frame to the last one wanted (fine for
clips of a few seconds, slower on long videos, but free of decord's quirks). Both are FFmpeg underneath and return
the same pixels up to rounding in the colour conversion.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

VIDEO_BACKENDS = ("decord", "pyav")

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


def read_bytes(path: str) -> bytes:
    """The bytes of a local file or of a URI that pyarrow's filesystems read (``s3://``, ``gs://``, ``hdfs://``)."""
    if "://" in path and not path.startswith("file://"):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as stream:
            return stream.read()
    with open(path.removeprefix("file://"), "rb") as file:
        return file.read()


def decode_frames(data: bytes, indices: np.ndarray, *, backend: str = "decord", num_threads: int = 1) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed) of an encoded video.

    Args:
        data: the encoded file's bytes.
        indices: frame numbers, each in ``[0, frames in the file)``; an index past the end reads the last frame.
        backend: ``decord`` or ``pyav``.
        num_threads: decoder threads (decord; PyAV picks its own with ``thread_type="AUTO"``).

    Returns:
        uint8 frames ``(len(indices), H, W, 3)``.

    Raises:
        BadVideo: the bytes do not decode.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if backend == "decord":
        return _decode_decord(data, indices, num_threads)
    if backend == "pyav":
        return _decode_pyav(data, indices)
    raise ValueError(f"unknown video backend {backend!r}: expected one of {', '.join(VIDEO_BACKENDS)}")


def _decode_decord(data: bytes, indices: np.ndarray, num_threads: int) -> np.ndarray:
    import decord

    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=num_threads)
    except Exception as err:  # noqa: BLE001 - decord raises its own error classes
        raise BadVideo(f"not a readable video ({_first_line(err)})") from None
    try:
        wanted = np.minimum(indices, len(reader) - 1)
        # get_batch decodes each distinct frame once and seeks between far-apart ones
        frames = reader.get_batch(wanted.tolist()).asnumpy()
    except Exception as err:  # noqa: BLE001
        raise BadVideo(f"frames do not decode ({_first_line(err)})") from None
    finally:
        # Free the reader (and its FFmpeg context, frame pool and threads) now rather than when the garbage
        # collector gets to it: decord's memory otherwise climbs over thousands of clips.
        del reader
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise BadVideo(f"decord returns frames of shape {frames.shape[1:]}, not (H, W, 3)")
    return frames


def _decode_pyav(data: bytes, indices: np.ndarray) -> np.ndarray:
    import av

    wanted = set(indices.tolist())
    last_wanted = max(wanted, default=-1)
    found: dict[int, np.ndarray] = {}
    latest = None  # the last frame decoded so far: what indices past the end read, as decord's clamp does
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for number, frame in enumerate(container.decode(stream)):
                latest = frame
                if number in wanted:
                    found[number] = frame.to_ndarray(format="rgb24")
                if number >= last_wanted:
                    break
            if latest is not None and len(found) < len(wanted):
                tail = latest.to_ndarray(format="rgb24")
                found.update({index: tail for index in wanted if index not in found})
    except Exception as err:  # noqa: BLE001 - PyAV raises many FFmpeg error classes
        raise BadVideo(f"not a readable video ({_first_line(err)})") from None
    if latest is None:
        raise BadVideo("no video frames decode")
    return np.stack([found[index] for index in indices.tolist()])
