"""Small video files for the tests, written with PyAV, and the ways real files go wrong: damaged frames, decord's
mis-sized widths, codecs decord does not know."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

from fovea.data.demo_video import render_demo_video


def write_video(
    path: Path,
    *,
    num_frames: int = 20,
    size: tuple[int, int] = (64, 64),
    codec: str = "libx264",
    container: str = "mp4",
    gop: int | None = None,
    fps: int = 10,
    seed: int = 0,
) -> bytes:
    """Encode a demo clip of ``size`` (height, width) and return the file's bytes; ``gop``: frames between keyframes."""
    height, width = size
    frames = render_demo_video("grow", np.random.default_rng(seed), size=max(size), num_frames=num_frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        options = {"preset": "12"} if codec == "libsvtav1" else {}
        if gop:
            options.update(g=str(gop), keyint_min=str(gop), sc_threshold="0")
        stream.options = options
        for pixels in frames[:, :height, :width]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path.read_bytes()


def damage_frames(data: bytes, *frames: int) -> bytes:
    """``data`` with the packets of the given frames (in display order) overwritten with zeros."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets = sorted((packet.pts, packet.pos, packet.size) for packet in container.demux(stream) if packet.size)
    damaged = bytearray(data)
    for frame in frames:
        _, position, size = packets[frame]
        damaged[position : position + size] = bytes(size)
    return bytes(damaged)


def keyframes(data: bytes) -> list[int]:
    """The display-order numbers of a file's keyframes."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets = sorted((packet.pts, packet.is_keyframe) for packet in container.demux(stream) if packet.size)
    return [number for number, (_, key) in enumerate(packets) if key]


def can_encode(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # noqa: BLE001 - this PyAV build lacks it
        return False
    return True
