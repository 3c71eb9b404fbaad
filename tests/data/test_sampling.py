"""Clip sampling: dense windows (random in training, evenly placed views in evaluation), TSN segments, loop padding;
and the sampled frames are the ones every video backend decodes."""

from __future__ import annotations

import numpy as np
import pytest
from video_files import write_video

from fovea.data.sampling import dense_indices, segment_indices
from fovea.data.video import decode_frames


def test_dense_training_windows_fit_and_vary():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        clip = dense_indices(100, num_frames=8, frame_interval=4, rng=rng)
        assert clip.dtype == np.int64 and clip.shape == (8,)
        assert np.all(np.diff(clip) == 4) and clip[0] >= 0 and clip[-1] <= 99
        starts.add(int(clip[0]))
    assert min(starts) == 0 and max(starts) == 100 - 29  # span 29: every start from 0 to 71 is possible
    same = [dense_indices(100, num_frames=8, frame_interval=4, rng=np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(*same)  # same seed, same clip


def test_dense_evaluation_views():
    centre = dense_indices(100, num_frames=8, frame_interval=4)
    assert centre.tolist() == [35 + 4 * i for i in range(8)]  # slack 71, centred at 71 // 2
    views = [dense_indices(100, num_frames=8, frame_interval=4, clip_index=k, num_clips=3) for k in range(3)]
    assert [int(v[0]) for v in views] == [0, 36, 71]  # first, middle and last windows
    with pytest.raises(ValueError, match="clip_index 3"):
        dense_indices(100, num_frames=8, frame_interval=4, clip_index=3, num_clips=3)


def test_short_videos_are_loop_padded():
    assert dense_indices(3, num_frames=8, frame_interval=2).tolist() == [0, 2, 1, 0, 2, 1, 0, 2]
    assert dense_indices(3, num_frames=4, frame_interval=1, rng=np.random.default_rng(0)).tolist() == [0, 1, 2, 0]
    assert segment_indices(3, num_frames=8).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match="no frames"):
        dense_indices(0, num_frames=8, frame_interval=1)


def test_segments_cover_the_whole_video():
    middle = segment_indices(32, num_frames=8)
    assert middle.tolist() == [1, 5, 9, 13, 17, 21, 25, 29]  # the middle of each 4-frame segment
    rng = np.random.default_rng(1)
    for _ in range(100):
        clip = segment_indices(50, num_frames=8, rng=rng)
        edges = np.floor(np.linspace(0, 50, 9)).astype(int)
        assert np.all(clip >= edges[:-1]) and np.all(clip < edges[1:])  # one frame inside each segment
    assert segment_indices(8, num_frames=8, rng=rng).tolist() == list(range(8))


def test_segment_evaluation_views_interleave():
    views = [segment_indices(40, num_frames=4, clip_index=k, num_clips=2).tolist() for k in range(2)]
    assert views == [[2, 12, 22, 32], [7, 17, 27, 37]]  # a quarter and three quarters into each segment
    assert segment_indices(40, num_frames=4).tolist() == [4, 14, 24, 34]  # one view: the middle frames
    with pytest.raises(ValueError, match="clip_index 2"):
        segment_indices(40, num_frames=4, clip_index=2, num_clips=2)


def test_segment_boundaries_are_exact_integers():
    # 122 frames in 14 segments: floating-point boundaries used to end segment 6 at frame 60 instead of 61
    middle = segment_indices(122, num_frames=14)
    bounds = [i * 122 // 14 for i in range(15)]
    assert middle.tolist() == [(bounds[i] + bounds[i + 1] - 1) // 2 for i in range(14)]
    assert middle[6] == 56  # the middle of [52, 61); the float boundaries made it [52, 60) and picked 55


@pytest.mark.parametrize("backend", ["decord", "pyav", "torchcodec"])
def test_every_backend_decodes_the_sampled_frames(tmp_path, backend):
    long, short = (write_video(tmp_path / f"{n}.mp4", num_frames=n, gop=6, seed=n) for n in (30, 5))
    every = {n: decode_frames(data, np.arange(n), backend="pyav") for n, data in ((30, long), (5, short))}
    assert len({frame.tobytes() for frame in every[30]}) == 30  # every frame differs: a wrong frame would show
    wanted = {
        30: [
            np.concatenate(
                [dense_indices(30, num_frames=4, frame_interval=3, clip_index=k, num_clips=3) for k in (2, 0)]
            ),
            segment_indices(30, num_frames=8, rng=np.random.default_rng(1)),
        ],
        5: [dense_indices(5, num_frames=8, frame_interval=2), segment_indices(5, num_frames=8)],  # loop-padded
    }
    for frames, data in ((30, long), (5, short)):
        for indices in wanted[frames]:
            assert np.array_equal(decode_frames(data, indices, backend=backend), every[frames][indices]), indices
