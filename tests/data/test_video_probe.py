"""Probing encoded videos with decord: metadata of a good file, a one-line reason for each kind of bad one."""

from __future__ import annotations

import numpy as np
import pytest

from fovea.data.demo_video import render_demo_video, write_mp4
from fovea.data.video import BadVideo, probe_video


@pytest.fixture(scope="module")
def good_mp4(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("videos") / "ok.mp4"
    write_mp4(path, render_demo_video("grow", np.random.default_rng(0), size=64, num_frames=20), fps=10)
    return path.read_bytes()


def test_a_good_video_is_probed(good_mp4):
    info = probe_video(good_mp4)
    assert (info.num_frames, info.width, info.height) == (20, 64, 64)
    assert info.fps == pytest.approx(10.0) and info.duration == pytest.approx(2.0)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_files_are_rejected(good_mp4, fraction):
    with pytest.raises(BadVideo, match=r"^corrupt or truncated video \(.+\)$"):
        probe_video(good_mp4[: int(len(good_mp4) * fraction)])


def test_empty_and_non_video_files_are_rejected():
    with pytest.raises(BadVideo, match=r"^empty file \(0 bytes\)$"):
        probe_video(b"")
    with pytest.raises(BadVideo, match=r"^not a readable video \(.+\)$") as caught:
        probe_video(b"this is a text file named clip.avi\n" * 20)
    assert "\n" not in str(caught.value)


def test_too_short_and_mis_sized_frames(tmp_path):
    short = tmp_path / "three.mp4"
    write_mp4(short, render_demo_video("move_left", np.random.default_rng(1), size=64, num_frames=3))
    assert probe_video(short.read_bytes()).num_frames == 3
    with pytest.raises(BadVideo, match=r"^too short: 3 frames, at least 8 needed$"):
        probe_video(short.read_bytes(), min_frames=8)
    odd = tmp_path / "w48.mp4"
    write_mp4(odd, np.zeros((4, 48, 48, 3), dtype=np.uint8))
    with pytest.raises(BadVideo, match=r"decord returns frames of shape \(48, 48, 4\)"):
        probe_video(odd.read_bytes())
