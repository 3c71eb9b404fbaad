"""The synthetic demo action set: real H.264 files, reproducible, and each class moves the way its name says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest

from fovea.data.demo_video import DEMO_ACTIONS, action_motion, make_demo_videos, render_demo_video

REPO = Path(__file__).resolve().parents[2]


def test_layout_real_mp4s_and_reproducible(tmp_path: Path) -> None:
    out = make_demo_videos(tmp_path / "videos", size=64, num_frames=12, fps=8, train_per_class=2, val_per_class=1)
    for split, count in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(DEMO_ACTIONS)
        for action in DEMO_ACTIONS:
            files = sorted((out / split / action).glob("*.mp4"))
            assert [f.name for f in files] == [f"{i:05d}.mp4" for i in range(count)]
    video = out / "train" / "grow" / "00001.mp4"
    assert video.read_bytes()[4:8] == b"ftyp"  # an MP4 container
    reader = decord.VideoReader(str(video))
    assert len(reader) == 12 and reader[0].shape == (64, 64, 3) and reader.get_avg_fps() == pytest.approx(8)
    # H.264 is lossy: the decoded frames are close to what was drawn, not equal
    drawn = render_demo_video("grow", np.random.default_rng([0, 0, DEMO_ACTIONS.index("grow"), 1]), size=64,
                              num_frames=12)  # fmt: skip
    decoded = reader.get_batch(list(range(12))).asnumpy()
    assert np.abs(decoded.astype(np.float32) - drawn).mean() < 6.0
    again = make_demo_videos(tmp_path / "again", size=64, num_frames=12, fps=8, train_per_class=2, val_per_class=1)
    assert (again / "val" / "shrink" / "00000.mp4").read_bytes() == (out / "val" / "shrink" / "00000.mp4").read_bytes()


@pytest.mark.parametrize("seed", range(5))
def test_each_class_moves_as_named(seed: int) -> None:
    size, frames = 192.0, 32
    for action in DEMO_ACTIONS:
        motion = action_motion(action, np.random.default_rng([seed, DEMO_ACTIONS.index(action)]), size, frames)
        dx, dy = motion["centre"][-1] - motion["centre"][0]
        turn = motion["angle"][-1] - motion["angle"][0]
        growth = motion["radius"][-1] / motion["radius"][0]
        moving = {"move_left": -dx, "move_right": dx, "move_up": -dy, "move_down": dy}
        if action in moving:
            assert moving[action] > 0.25 * size - 3 and abs(turn) < 0.5 and growth == pytest.approx(1.0)
        else:
            assert np.hypot(dx, dy) < 0.075 * size  # the others drift by at most 5% per axis
        if action.startswith("rotate"):
            assert (turn > np.pi / 2 - 1e-6) == (action == "rotate_clockwise")
            assert abs(turn) >= np.pi / 2 - 1e-6
        if action in ("grow", "shrink"):
            assert (growth > 1.5) if action == "grow" else (growth < 1 / 1.5)
        # moving and turning objects stay inside the frame the whole time; a growing one may reach past the edge
        # at its largest (radius up to 40% of the frame), but its centre stays well inside
        radius = motion["radius"][:, None]
        if action in ("grow", "shrink"):
            assert radius.max() <= 0.4 * size and np.all(np.abs(motion["centre"] - size / 2) < 0.26 * size)
        else:
            assert np.all(motion["centre"] - radius > -1) and np.all(motion["centre"] + radius < size + 1)


def test_no_single_frame_tells_the_class() -> None:
    # mid-clip, the object's size has a common range in every class (grow and shrink are each other's time
    # reversal), and its position and angle are uniform in all of them: one frame says nothing of the class
    middle = {}
    for action in DEMO_ACTIONS:
        radii = [action_motion(action, np.random.default_rng([s]), 192.0, 33)["radius"][16] for s in range(300)]
        middle[action] = (min(radii), max(radii))
    low = max(r[0] for r in middle.values())
    high = min(r[1] for r in middle.values())
    assert high - low > 0.03 * 192


def test_command_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "make_demo_data.py"), "videos", str(tmp_path / "v"), "--size", "32",
         "--num-frames", "8", "--train-per-class", "1", "--val-per-class", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote 8 train + 8 val videos" in done.stdout
    assert len(list((tmp_path / "v").rglob("*.mp4"))) == 16
    bad = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "make_demo_data.py"), "videos", str(tmp_path / "w"), "--size", "33"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "even number" in bad.stderr
