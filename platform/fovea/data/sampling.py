"""Which frames make a clip: dense sampling (SlowFast/MViT) and segment-uniform sampling (TSN/ViViT).

Both return frame indices into a video of ``video_frames`` frames; decoding them is the reader's job. Videos
shorter than a clip's span are loop-padded: indices wrap around (``i mod video_frames``), so a 3-frame video gives
a 16-frame clip that replays it, instead of an error or a clip of repeated last frames.
"""

from __future__ import annotations

import numpy as np


def dense_indices(
    video_frames: int,
    *,
    num_frames: int,
    frame_interval: int,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """``num_frames`` frames ``frame_interval`` apart from one window of the video.

    Training (``rng`` given) starts the window anywhere it fits, uniformly. Evaluation (``rng`` None) places
    ``num_clips`` windows evenly from the start to the end of the video and returns window ``clip_index``
    (``num_clips=1`` is the centre window), as multi-view testing in SlowFast does.

    Returns:
        int64 indices, shape ``(num_frames,)``, each in ``[0, video_frames)``.
    """
    _check(video_frames, num_frames)
    if frame_interval < 1:
        raise ValueError(f"frame_interval must be at least 1, got {frame_interval}")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index {clip_index} is outside 0..{num_clips - 1}")
    span = (num_frames - 1) * frame_interval + 1  # frames the window covers
    slack = max(0, video_frames - span)  # how far the window can slide
    if rng is not None:
        start = int(rng.integers(0, slack + 1))
    elif num_clips == 1:
        start = slack // 2
    else:
        start = round(clip_index * slack / (num_clips - 1))
    return (start + np.arange(num_frames, dtype=np.int64) * frame_interval) % video_frames


def segment_indices(
    video_frames: int,
    *,
    num_frames: int,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """One frame from each of ``num_frames`` equal segments of the whole video (TSN, Wang et al. 2016).

    Training picks a random frame in each segment. Evaluation takes, in every segment, the frame at fraction
    ``(clip_index + 0.5) / num_clips`` of it: the middle frame for a single view, and ``num_clips`` views that
    interleave for multi-view testing. A video with fewer frames than segments is loop-padded.

    Returns:
        int64 indices, shape ``(num_frames,)``, non-decreasing for videos of at least ``num_frames`` frames.
    """
    _check(video_frames, num_frames)
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index {clip_index} is outside 0..{num_clips - 1}")
    if video_frames < num_frames:
        return np.arange(num_frames, dtype=np.int64) % video_frames
    # segment i is frames [floor(i * F / N), floor((i + 1) * F / N)), in exact integer arithmetic (floats put some
    # boundaries a frame early, e.g. 61 -> 60 for 122 frames in 14 segments); each holds at least one frame
    edges = np.arange(num_frames + 1, dtype=np.int64) * video_frames // num_frames
    low, high = edges[:-1], edges[1:]
    if rng is None:
        if num_clips == 1:
            return (low + high - 1) // 2
        # the frame at fraction (clip_index + 0.5) / num_clips of each segment
        return low + (2 * clip_index + 1) * (high - low) // (2 * num_clips)
    return low + (rng.random(num_frames) * (high - low)).astype(np.int64)


def _check(video_frames: int, num_frames: int) -> None:
    if video_frames < 1:
        raise ValueError(f"the video has no frames ({video_frames})")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
