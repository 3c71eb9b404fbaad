"""A synthetic action set: eight kinds of motion that no single frame can tell apart.

Every video shows one object (a random asymmetric shape in a random colour, at a random position, size and angle)
over a random background with a fixed noise texture, plus a soft distractor blob drifting in a random direction.
The class is what the object *does* over time (:data:`DEMO_ACTIONS`): move left/right/up/down, rotate clockwise or
counter-clockwise, grow or shrink, each at a random speed. Any one frame is a plausible frame of every class, so
a model has to compare frames. Left/right are defined by direction: train on this set with horizontal flip off.

Videos are written as real H.264 MP4 files with PyAV, ``out/<split>/<action>/<index:05d>.mp4``. Each video has its
own generator, ``np.random.default_rng([seed, split_id, class_id, index])``, so any video can be regenerated alone.

Frame sizes: H.264 4:2:0 needs even sides, and decord 0.6 returns frames of the wrong shape for some widths (16
and 48 pixels give 6 and 4 "channels" here), so the default 96 and other multiples of 32 are the safe choices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fovea.data.demo import contrasting_colours, ensure_prepared, regular_polygon, write_class_folders
from fovea.paths import fovea_home

DEMO_ACTIONS = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_clockwise",
    "rotate_counterclockwise",
    "grow",
    "shrink",
)
_SUPERSAMPLE = 2
# bumped whenever the drawing changes, so a cached set in FOVEA_HOME from an older generator is not reused
DEMO_VIDEO_VERSION = 2
# shapes whose orientation is visible (no circles or squares that look the same after a quarter turn)
_ARROW = np.array([[0.0, -1.0], [0.7, 0.0], [0.25, 0.0], [0.25, 1.0], [-0.25, 1.0], [-0.25, 0.0], [-0.7, 0.0]])
_KITE = np.array([[0.0, -1.0], [0.55, 0.15], [0.0, 0.6], [-0.55, 0.15]])
_L_SHAPE = np.array([[-0.6, -1.0], [-0.1, -1.0], [-0.1, 0.5], [0.7, 0.5], [0.7, 1.0], [-0.6, 1.0]])


def _object_shape(rng: np.random.Generator) -> np.ndarray:
    """A unit-sized polygon ``(V, 2)`` with a visible orientation."""
    choice = int(rng.integers(4))
    if choice == 0:
        return regular_polygon(3) * np.array([0.7, 1.0])  # a tall triangle
    if choice == 1:
        return _KITE.copy()
    if choice == 2:
        return _ARROW.copy()
    return _L_SHAPE.copy()


def action_motion(action: str, rng: np.random.Generator, size: float, num_frames: int) -> dict[str, np.ndarray]:
    """Per-frame centre ``(T, 2)``, angle ``(T,)`` and radius ``(T,)`` of the object, in supersampled pixels."""
    t = np.arange(num_frames, dtype=np.float64)
    radius0 = size * rng.uniform(0.2, 0.3)  # large enough to read at 32 px (see RESULTS.md)
    angle0 = rng.uniform(0, 2 * np.pi)
    # a little wobble everywhere, so "not moving" and "not rotating" are never exactly still
    wobble_angle = rng.uniform(-0.01, 0.01) * t
    radius = np.full(num_frames, radius0)
    angle = angle0 + wobble_angle
    direction = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
    if action in direction:
        travel = size * rng.uniform(0.25, 0.4)  # the whole clip covers 25-40% of the frame
        start_low, start_high = radius0 + 1, size - radius0 - 1
        travel = min(travel, 0.999 * (start_high - start_low))  # a large object has less room: it stays inside
        step = np.array(direction[action], dtype=np.float64) * travel / max(1, num_frames - 1)
        start = rng.uniform(start_low, start_high, size=2)
        axis = 0 if step[0] else 1
        # start far enough from the edge the object moves towards
        start[axis] = (
            rng.uniform(start_low + travel, start_high)
            if step[axis] < 0
            else rng.uniform(start_low, start_high - travel)
        )
        centre = start + t[:, None] * step
    else:
        drift = rng.uniform(-0.05, 0.05, size=2) * size / max(1, num_frames)
        start = rng.uniform(size * 0.3, size * 0.7, size=2)
        centre = start + t[:, None] * drift
        if action.startswith("rotate"):
            rate = rng.uniform(np.pi / 2, 1.5 * np.pi) / max(1, num_frames - 1)  # a quarter to 3/4 turn per clip
            # image y points down: a growing angle turns the drawing clockwise on screen
            angle = angle0 + (rate if action == "rotate_clockwise" else -rate) * t
        else:
            factor = rng.uniform(1.6, 2.2)
            ratio = factor ** (t / max(1, num_frames - 1))  # geometric growth from 1 to factor
            small = size * rng.uniform(0.13, 0.18)
            radius = small * ratio if action == "grow" else small * factor / ratio
    return {"centre": centre, "angle": angle, "radius": radius}


def render_demo_video(action: str, rng: np.random.Generator, *, size: int = 96, num_frames: int = 32) -> np.ndarray:
    """Draw one demo video.

    Args:
        action: One of :data:`DEMO_ACTIONS`.
        rng: The video's own generator; the video is a pure function of its state.
        size: Side of the square frames in pixels.
        num_frames: Frames in the video.

    Returns:
        The frames, ``(T, size, size, 3)`` uint8.
    """
    if action not in DEMO_ACTIONS:
        raise ValueError(f"unknown demo action {action!r}; expected one of {', '.join(DEMO_ACTIONS)}")
    big = size * _SUPERSAMPLE
    shape = _object_shape(rng)
    background, colour = contrasting_colours(rng)
    motion = action_motion(action, rng, big, num_frames)
    # a fixed background texture (cheap to encode) and a soft distractor drifting in its own direction
    texture = rng.normal(0, rng.uniform(3.0, 10.0), size=(size, size, 3)).astype(np.float32)
    base = np.clip(background.astype(np.float32) + texture, 0, 255)
    blob_colour = rng.uniform(0, 255, size=3).astype(np.float32)
    blob_radius = size * rng.uniform(0.1, 0.2)
    blob_start = rng.uniform(0, size, size=2)
    blob_step = rng.normal(0, 0.6, size=2)
    blob_strength = rng.uniform(0.2, 0.35)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for index in range(num_frames):
        centre, angle, radius = motion["centre"][index], motion["angle"][index], motion["radius"][index]
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = shape @ rotation.T * radius + centre  # (V, 2)
        mask = Image.new("L", (big, big), 0)
        ImageDraw.Draw(mask).polygon([tuple(p) for p in points], fill=255)
        alpha = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0
        blob = Image.new("L", (size, size), 0)
        blob_centre = blob_start + index * blob_step
        ImageDraw.Draw(blob).ellipse(
            [*(blob_centre - blob_radius), *(blob_centre + blob_radius)], fill=int(255 * blob_strength)
        )
        blob_alpha = np.asarray(blob.filter(ImageFilter.GaussianBlur(size * 0.03)), dtype=np.float32)[..., None]
        frame = base * (1 - blob_alpha / 255.0) + blob_colour * (blob_alpha / 255.0)
        frame = frame * (1 - alpha) + colour.astype(np.float32) * alpha
        frames[index] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: str | Path, frames: np.ndarray, *, fps: int = 16, crf: int = 23) -> None:
    """Encode ``(T, H, W, 3)`` uint8 frames as an H.264 MP4 file (yuv420p, so H and W must be even)."""
    import av

    # faststart puts the index (moov) first, so readers can start before the end of the file arrives
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)


def make_demo_videos(
    out: str | Path,
    *,
    size: int = 96,
    num_frames: int = 32,
    fps: int = 16,
    train_per_class: int = 100,
    val_per_class: int = 25,
    seed: int = 0,
) -> Path:
    """Write the demo action set as MP4 files ``out/<split>/<action>/<index:05d>.mp4``.

    Like the image set, it is built in a temporary sibling folder renamed to ``out`` at the end, so an interrupted
    run never leaves a partial set that looks complete.

    Raises:
        FileExistsError: ``out`` exists and is not an empty folder.
        ValueError: A size, length or count is out of range.
    """
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number of at least 16 pixels (H.264 4:2:0), got {size}")
    if num_frames < 2 or fps < 1:
        raise ValueError(f"need at least 2 frames and 1 fps, got {num_frames} frames at {fps} fps")
    if train_per_class < 0 or val_per_class < 0 or seed < 0:
        raise ValueError("train_per_class, val_per_class and seed must be non-negative")

    def write(path: Path, action: str, rng: np.random.Generator) -> None:
        write_mp4(path, render_demo_video(action, rng, size=size, num_frames=num_frames), fps=fps)

    return write_class_folders(
        out, DEMO_ACTIONS, {"train": train_per_class, "val": val_per_class}, seed=seed, suffix=".mp4", write=write
    )


def ensure_demo_videos(
    *, size: int = 96, num_frames: int = 32, train_per_class: int = 100, val_per_class: int = 25, seed: int = 0
) -> Path:
    """The prepared demo video set, generated and prepared (with Ray Data) on first use and cached in FOVEA_HOME.

    Returns:
        The prepared dataset folder (it holds ``manifest.json``).
    """
    from fovea.data.prepare_video import prepare_videos

    name = f"demo-videos-v{DEMO_VIDEO_VERSION}-s{size}-f{num_frames}-n{train_per_class}-{val_per_class}-seed{seed}"
    return ensure_prepared(
        fovea_home() / "datasets" / name,
        "video",
        make=lambda raw: make_demo_videos(
            raw,
            size=size,
            num_frames=num_frames,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            seed=seed,
        ),
        prepare=lambda raw, prepared: prepare_videos(raw, prepared, shard_rows=100),
        count=len(DEMO_ACTIONS) * (train_per_class + val_per_class),
    )
