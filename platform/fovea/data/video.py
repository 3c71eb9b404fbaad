"""Reading encoded videos: probe a file's metadata, prove it decodes, and decode the frames of a clip.

Three decoders read videos (:data:`VIDEO_BACKENDS`): decord, which seeks straight to the wanted frames and decodes
them with its own threads; PyAV, which decodes clips in order from the first frame to the last one wanted (fine
for clips of a few seconds, slower on long videos, but free of decord's quirks: decord 0.6 mis-sizes the frames of
some widths, 16, 24 or 48 pixels, and does not know AV1); and TorchCodec (PyTorch's own decoder, over the system's
FFmpeg shared libraries), which seeks exactly to each wanted frame from the keyframe before it, reads what decord
cannot, and decodes on a GPU's NVDEC too (``data.video_decode=device``, :mod:`fovea.data.device_decode`). All are
FFmpeg underneath and return the same pixels up to rounding in the colour conversion. All read from memory, so the
same code serves files on disk and rows of Parquet shards.

Probing (:func:`probe_video`) tries the backends in that order and keeps the first that reads the file, which
preparation records as the row's ``backend``: it decodes :data:`PROBE_POINTS` frames spread over the file, the
first, the last (a truncated file usually still opens, its header intact, and fails only on the frames cut off)
and single keyframes between them (damage in the middle), and checks their shape against the size the stream
declares. A file no backend reads is a :class:`BadVideo` whose reason gives each backend's error. Decoding a
clip (:func:`decode_frames`) takes a list of backends too, :func:`backend_order` giving a row's. TorchCodec
without FFmpeg's libraries is a :class:`BackendUnavailable` naming the fix (:func:`check_backend`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

# Probe order: the first of these that reads a file is the backend recorded for it.
# torchcodec comes last: datasets prepared before it keep their meaning (a row's ``backend`` rules out the ones before).
VIDEO_BACKENDS = ("decord", "pyav", "torchcodec")
PROBE_POINTS = 5  # frames decoded by a probe: the first, the last and keyframes evenly spread between them

_DECORD_PREFIX = re.compile(r"^(?:\[[\d:]+\] \S+:\d+: )+")  # time and source, once per rethrow
_DECORD_CHECK = re.compile(r"^Check failed: .*?\(-?\d+ vs\. -?\d+\) ")  # the C++ condition before the complaint
_TORCHCODEC_PREFIX = re.compile(r"^\w+, \S+\.(?:cpp|h):\d+, ")  # "decode_av_frame, /.../X.cpp:1493, " before it
# What a user installs for TorchCodec's FFmpeg (major versions 4 to 9, shared libraries); pip cannot provide them.
FFMPEG_FIX = (
    "install FFmpeg's shared libraries (Debian/Ubuntu: apt-get install ffmpeg; macOS: brew install ffmpeg; conda: "
    "conda install -c conda-forge ffmpeg) or use data.video_backend=decord"
)


class BadVideo(ValueError):
    """A video that cannot be used; the message is the one-line reason recorded in a manifest.

    Args:
        reason: what is wrong (``"damaged: frames do not decode"``).
        detail: the decoder's own words, put in brackets after ``reason``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason, self.detail = reason, detail


class BackendUnavailable(BadVideo):
    """A backend that cannot run on this machine at all (TorchCodec without FFmpeg's libraries): the same for every
    file, so a run configured for it stops before it starts (:func:`check_backend`)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns of a video: its metadata, the backend that reads it, and why earlier ones did not."""

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    backend: str = "decord"
    fallback: str = ""  # "" when the first backend read it; else each earlier backend's error


def probe_video(data: bytes, *, min_frames: int = 1, backends: Sequence[str] = VIDEO_BACKENDS) -> VideoInfo:
    """Find the first of ``backends`` that decodes frames spread over ``data``, and return the video's metadata.

    Args:
        data: the encoded file's bytes (MP4, AVI, MKV, WebM, ... whatever FFmpeg reads).
        min_frames: fewer decodable frames than this is an error (``too short``).
        backends: the decoders to try, in order.

    Raises:
        BadVideo: empty, or no backend reads it (not a video, truncated, damaged, frames of the wrong shape; the
            reason names each backend's error), or too short.
    """
    if not data:
        raise BadVideo("empty file (0 bytes)")
    size = _declared_size(data)
    failures: list[tuple[str, BadVideo]] = []
    for backend in backends:
        probe = {"decord": _probe_decord, "pyav": _probe_pyav, "torchcodec": _probe_torchcodec}.get(backend)
        if probe is None:
            raise ValueError(_unknown_backend(backend))
        try:
            info = probe(data, size)
        except BadVideo as err:
            failures.append((backend, err))
            continue
        if info.num_frames < min_frames:
            raise BadVideo(f"too short: {info.num_frames} frames, at least {min_frames} needed")
        return replace(info, fallback=combined_reason(failures)) if failures else info
    raise BadVideo(combined_reason(failures))


def combined_reason(failures: Sequence[tuple[str, BadVideo]]) -> str:
    """One line for the errors of several backends on one file: the first one's reason, then each one's words.

    ``[("decord", BadVideo("damaged: frames do not decode", "frame 0 of 9: Error sending packet")), ("pyav", ...)]``
    gives ``damaged: frames do not decode (decord: frame 0 of 9: Error sending packet; pyav: ...)``; a backend that
    failed for another reason gives its whole message.
    """
    if len(failures) < 2:
        return str(failures[0][1]) if failures else "no video backend tried"
    reason = failures[0][1].reason
    words = [f"{name}: {err.detail if err.reason == reason and err.detail else err}" for name, err in failures]
    return f"{reason} ({'; '.join(words)})"


def backend_order(configured: str, recorded: str | None = None) -> tuple[str, ...]:
    """The backends to try on one file: ``data.video_backend`` first, then the others, less those known not to read it.

    ``recorded`` is the row's ``backend`` column (the first of :data:`VIDEO_BACKENDS` that read the file when it was
    prepared; None for shards made before the column): the backends before it in probe order are left out, so a
    file only PyAV reads is decoded with PyAV whatever the configured backend.
    """
    if configured not in VIDEO_BACKENDS:
        raise ValueError(_unknown_backend(configured))
    allowed = VIDEO_BACKENDS[VIDEO_BACKENDS.index(recorded) :] if recorded in VIDEO_BACKENDS else VIDEO_BACKENDS
    first = configured if configured in allowed else allowed[0]
    return (first, *(name for name in allowed if name != first))


def probe_positions(num_frames: int, points: int = PROBE_POINTS) -> list[int]:
    """Up to ``points`` frame numbers evenly spread from the first frame to the last."""
    return sorted({round(k * (num_frames - 1) / max(1, points - 1)) for k in range(points)})


def _unknown_backend(name: str) -> str:
    return f"unknown video backend {name!r}: expected one of {', '.join(VIDEO_BACKENDS)}"


def _unopened(data: bytes) -> str:
    """The reason for a file a decoder cannot open: its header (``ftyp``: MP4/MOV) says whether it was a video."""
    return "corrupt or truncated video" if data[4:8] == b"ftyp" else "not a readable video"


def _frame_failure(position: int, num_frames: int, detail: str) -> BadVideo:
    """A frame that does not decode. The frame number is where the backend was reading: decord's decoder thread reads
    ahead, so its error may come from a later frame; PyAV's probe reads one frame at a time."""
    last = position == num_frames - 1 and num_frames > 1
    reason = "truncated: the last frame does not decode" if last else "damaged: frames do not decode"
    return BadVideo(reason, f"frame {position} of {num_frames}: {detail}")


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` as the first video stream's header declares it (PyAV), None when it cannot tell."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            context = container.streams.video[0].codec_context
            return (int(context.height), int(context.width)) if context.width and context.height else None
    except Exception:  # noqa: BLE001 - not readable here: the probes say why
        return None


def _check_shape(backend: str, shape: tuple[int, ...], size: tuple[int, int]) -> None:
    if tuple(shape) != (*size, 3):
        raise BadVideo(f"{backend} returns frames of shape {tuple(shape)}, not {(*size, 3)}")


def _probe_decord(data: bytes, size: tuple[int, int] | None) -> VideoInfo:
    """The first and last frame decoded exactly, keyframes between them with decord's fast seek."""
    import decord

    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    except Exception as err:  # noqa: BLE001 - decord raises its own DECORDError or RuntimeError subclasses
        raise BadVideo(_unopened(data), _first_line(err)) from None
    try:
        num_frames = len(reader)
        last = num_frames - 1
        for position in probe_positions(num_frames):
            try:
                if position in (0, last):
                    shape = reader[position].shape  # exact: decodes up to the frame from the keyframe before it
                else:
                    reader.seek(position)  # the keyframe at or before it: one frame decoded
                    shape = reader.next().shape
            except Exception as err:  # noqa: BLE001
                raise _frame_failure(position, num_frames, _first_line(err)) from None
            # decord 0.6 mis-sizes frames of some widths (16 and 48 pixels give 6 and 4 channels)
            size = size or (int(shape[0]), int(shape[1]))
            _check_shape("decord", shape, size)
        try:
            fps = float(reader.get_avg_fps())
        except Exception as err:  # noqa: BLE001
            raise BadVideo("no frame rate", _first_line(err)) from None
    finally:
        del reader  # decord keeps decoder state (and memory) until the reader is freed
    height, width = size or (0, 0)
    duration = num_frames / fps if fps > 0 else 0.0
    return VideoInfo(num_frames=num_frames, fps=fps, duration=duration, width=width, height=height, backend="decord")


def _probe_pyav(data: bytes, size: tuple[int, int] | None) -> VideoInfo:
    """The frames counted from the packets (no decoding), then one frame decoded at each probe position by seeking;
    where seeking does not find them (it is approximate in MPEG-TS and FLV, refused in raw streams), the frames
    decoded in order up to the last, as training with PyAV reads them."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as err:  # noqa: BLE001 - PyAV raises many FFmpeg error classes
        raise BadVideo(_unopened(data), _first_line(err)) from None
    with container:
        if not container.streams.video:
            raise BadVideo("no video stream")
        stream = container.streams.video[0]
        listed = int(stream.frames or 0)  # what the index says (0 where the container keeps no count: MKV, WebM)
        try:
            stamps = sorted(_packet_stamps(container, stream))
        except Exception as err:  # noqa: BLE001
            raise BadVideo(_unopened(data), _first_line(err)) from None
        num_frames = len(stamps)
        if num_frames == 0:
            raise BadVideo("no video frames")
        if listed > num_frames:
            raise BadVideo("truncated", f"{num_frames} of the {listed} frames its index lists are in the file")
        rate = stream.average_rate or stream.guessed_rate
        try:
            size = _pyav_seek_frames(container, stream, stamps, size)
        except BadVideo as seek_failure:
            try:
                num_frames, size = _pyav_frames_in_order(data, num_frames, size)
            except BadVideo:
                raise seek_failure from None  # it names the frame it read; the decoder's delay blurs the other's
    fps = float(rate) if rate else 0.0
    height, width = size
    duration = num_frames / fps if fps > 0 else 0.0
    return VideoInfo(num_frames=num_frames, fps=fps, duration=duration, width=width, height=height, backend="pyav")


def _pyav_seek_frames(container: Any, stream: Any, stamps: list[int], size: tuple[int, int] | None) -> tuple[int, int]:
    """Decode the keyframe at or before each probe position (the last frame itself); returns the frame size."""
    num_frames = len(stamps)
    for position in probe_positions(num_frames):
        try:
            pixels = _pyav_frame_near(container, stream, stamps[position], to_end=position == num_frames - 1)
        except Exception as err:  # noqa: BLE001
            raise _frame_failure(position, num_frames, _first_line(err)) from None
        if pixels is None:
            raise _frame_failure(position, num_frames, "no frame comes out of the decoder")
        size = size or pixels.shape[:2]
        _check_shape("pyav", pixels.shape, size)
    return size


def _pyav_frames_in_order(data: bytes, num_frames: int, size: tuple[int, int] | None) -> tuple[int, tuple[int, int]]:
    """Decode every frame from the first, checking each one's size; returns the frames decoded and their size."""
    import av

    decoded, pixels = 0, None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]  # one decoder thread: a failure's frame number is the frame's
            for frame in container.decode(stream):
                size = size or (frame.height, frame.width)
                if (frame.height, frame.width) != size:
                    raise BadVideo(f"pyav returns frames of shape {(frame.height, frame.width, 3)}, not {(*size, 3)}")
                decoded, pixels = decoded + 1, frame
    except BadVideo:
        raise
    except Exception as err:  # noqa: BLE001
        raise _frame_failure(decoded, num_frames, _first_line(err)) from None
    if pixels is None or size is None:
        raise _frame_failure(0, num_frames, "no frame comes out of the decoder")
    _check_shape("pyav", pixels.to_ndarray(format="rgb24").shape, size)
    return min(decoded, num_frames), size


def _packet_stamps(container: Any, stream: Any) -> list[int]:
    """Each frame's timestamp, one per packet with data (demuxing reads the packets without decoding them)."""
    stamps = []
    for packet in container.demux(stream):
        if packet.size:
            stamp = packet.pts if packet.pts is not None else packet.dts
            stamps.append(stamp if stamp is not None else (stamps[-1] + 1 if stamps else 0))
    return stamps


def _pyav_frame_near(container: Any, stream: Any, stamp: int, *, to_end: bool) -> np.ndarray | None:
    """RGB pixels of the keyframe at or before ``stamp`` (``to_end``: of the stream's last frame), or None."""
    container.seek(stamp, stream=stream, backward=True)  # PyAV flushes the decoder after a seek
    latest = None
    for frame in container.decode(stream):
        latest = frame
        if not to_end:
            break
    return None if latest is None else latest.to_ndarray(format="rgb24")


def open_torchcodec(data: bytes, *, num_threads: int = 1, device: str = "cpu") -> Any:
    """A TorchCodec ``VideoDecoder`` over ``data`` giving ``(N, H, W, 3)`` frames, with an exact frame index (the
    file's packets are scanned once, no decoding, so frame numbers mean what decord's and PyAV's do).

    Raises:
        BackendUnavailable: TorchCodec is not installed or cannot load FFmpeg's shared libraries.
        BadVideo: the bytes do not open as a video.
    """
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as err:  # noqa: BLE001 - ImportError, or a torch it was not built for failing to load it
        raise BackendUnavailable("torchcodec does not import", f"pip install torchcodec; {_first_line(err)}") from None
    try:
        return VideoDecoder(
            data, dimension_order="NHWC", num_ffmpeg_threads=num_threads, device=device, seek_mode="exact"
        )
    except RuntimeError as err:
        if str(err).startswith("Could not load libtorchcodec"):
            raise BackendUnavailable(
                f"torchcodec cannot load FFmpeg's shared libraries (versions 4-9): {FFMPEG_FIX}"
            ) from None
        raise BadVideo(_unopened(data), _first_line(err)) from None
    except Exception as err:  # noqa: BLE001 - ValueError for an empty buffer, others from FFmpeg
        raise BadVideo(_unopened(data), _first_line(err)) from None


def check_backend(name: str) -> None:
    """Raise :class:`BackendUnavailable` when backend ``name`` cannot run here (TorchCodec without FFmpeg); decord and
    PyAV are pip dependencies that carry their own FFmpeg."""
    if name not in VIDEO_BACKENDS:
        raise ValueError(_unknown_backend(name))
    if name == "torchcodec":
        try:
            open_torchcodec(b"\0" * 64)  # loads the libraries, then fails to open these bytes as a video
        except BackendUnavailable:
            raise
        except BadVideo:
            pass


def _probe_torchcodec(data: bytes, size: tuple[int, int] | None) -> VideoInfo:
    """The frames counted from the packets (TorchCodec's exact scan), each probe position decoded exactly."""
    decoder = open_torchcodec(data)
    metadata = decoder.metadata
    num_frames = len(decoder)
    if num_frames == 0:
        raise BadVideo("no video frames")
    for position in probe_positions(num_frames):
        try:
            shape = tuple(decoder.get_frame_at(position).data.shape)
        except Exception as err:  # noqa: BLE001 - RuntimeError from FFmpeg, IndexError past a truncated end
            raise _frame_failure(position, num_frames, _first_line(err)) from None
        size = size or (int(shape[0]), int(shape[1]))
        _check_shape("torchcodec", shape, size)
    fps = float(metadata.average_fps or 0.0)
    height, width = size or (0, 0)
    duration = num_frames / fps if fps > 0 else 0.0
    return VideoInfo(num_frames, fps, duration, width, height, backend="torchcodec")


def decode_torchcodec(data: bytes, indices: np.ndarray, *, num_threads: int = 1, device: str = "cpu") -> Any:
    """The frames at ``indices`` as a uint8 tensor ``(len(indices), H, W, 3)`` on ``device`` (``cuda``: NVDEC);
    an index past the end reads the last frame, as decord's clamp does.

    Raises:
        BackendUnavailable: no TorchCodec or no FFmpeg.
        BadVideo: the bytes do not decode.
    """
    decoder = open_torchcodec(data, num_threads=num_threads, device=device)
    try:
        wanted = np.minimum(np.asarray(indices, dtype=np.int64), len(decoder) - 1)
        # one call: each distinct frame decoded once, in file order, seeking only across keyframes
        return decoder.get_frames_at(wanted.tolist()).data
    except Exception as err:  # noqa: BLE001
        raise BadVideo("frames do not decode", _first_line(err)) from None
    finally:
        del decoder  # its FFmpeg context and frame buffers go now, not at the next garbage collection


def _first_line(err: BaseException) -> str:
    # decord's messages carry a timestamp, its source location and the failed C++ check, then the complaint,
    # sometimes over lines; PyAV's start with "[Errno N]"; TorchCodec's with the C++ function, file and line
    lines = [_DECORD_CHECK.sub("", _DECORD_PREFIX.sub("", line).strip()) for line in str(err).splitlines()]
    lines = [_TORCHCODEC_PREFIX.sub("", line) for line in lines]
    lines = [line for line in lines if line]
    text = (lines[-1] if lines else type(err).__name__).strip()
    strerror = getattr(err, "strerror", None)
    if isinstance(strerror, str) and strerror and text.startswith("[Errno"):
        text = strerror
    return text[:200]


def read_bytes(path: str) -> bytes:
    """The bytes of a local file or of a URI that pyarrow's filesystems read (``s3://``, ``gs://``, ``hdfs://``)."""
    if "://" in path and not path.startswith("file://"):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as stream:
            return stream.read()
    with open(path.removeprefix("file://"), "rb") as file:
        return file.read()


def decode_frames(
    data: bytes, indices: np.ndarray, *, backend: str | Sequence[str] = "decord", num_threads: int = 1
) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed) of an encoded video.

    Args:
        data: the encoded file's bytes.
        indices: frame numbers, each in ``[0, frames in the file)``; an index past the end reads the last frame.
        backend: ``decord``, ``pyav`` or ``torchcodec``, or several to try in order until one decodes the frames
            (see :func:`backend_order`).
        num_threads: decoder threads (decord and TorchCodec, 0 = they pick; PyAV picks its own with
            ``thread_type="AUTO"``).

    Returns:
        uint8 frames ``(len(indices), H, W, 3)``.

    Raises:
        BadVideo: the bytes do not decode (with several backends: the reason gives each one's error).
    """
    indices = np.asarray(indices, dtype=np.int64)
    backends = (backend,) if isinstance(backend, str) else tuple(backend)
    failures: list[tuple[str, BadVideo]] = []
    for name in backends:
        if name not in VIDEO_BACKENDS:
            raise ValueError(_unknown_backend(name))
        try:
            if name == "torchcodec":
                return decode_torchcodec(data, indices, num_threads=num_threads).numpy()
            return _decode_decord(data, indices, num_threads) if name == "decord" else _decode_pyav(data, indices)
        except BadVideo as err:
            failures.append((name, err))
    if not failures:
        raise ValueError("no video backend given")
    raise BadVideo(combined_reason(failures))


def _decode_decord(data: bytes, indices: np.ndarray, num_threads: int) -> np.ndarray:
    import decord

    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=num_threads)
    except Exception as err:  # noqa: BLE001 - decord raises its own error classes
        raise BadVideo("not a readable video", _first_line(err)) from None
    try:
        wanted = np.minimum(indices, len(reader) - 1)
        # get_batch decodes each distinct frame once and seeks between far-apart ones
        frames = reader.get_batch(wanted.tolist()).asnumpy()
    except Exception as err:  # noqa: BLE001
        raise BadVideo("frames do not decode", _first_line(err)) from None
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
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as err:  # noqa: BLE001 - PyAV raises many FFmpeg error classes
        raise BadVideo("not a readable video", _first_line(err)) from None
    try:
        with container:
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
    except Exception as err:  # noqa: BLE001
        raise BadVideo("frames do not decode", _first_line(err)) from None
    if latest is None:
        raise BadVideo("no video frames decode")
    try:
        return np.stack([found[index] for index in indices.tolist()])
    except ValueError as err:  # the stream changes size part-way
        raise BadVideo("frames of different sizes", _first_line(err)) from None
