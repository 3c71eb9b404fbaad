"""Probing encoded videos: metadata of a good file, a one-line reason for each kind of bad one (giving each backend's
error), PyAV or TorchCodec for the files decord cannot read, damage found anywhere a probe looks, TorchCodec without
FFmpeg's libraries."""

from __future__ import annotations

import numpy as np
import pytest
from video_files import can_encode, damage_frames, keyframes, write_video

from fovea.data.clips import ClipSpec, DecodeClips
from fovea.data.demo_video import render_demo_video, write_mp4
from fovea.data.video import (
    FFMPEG_FIX,
    BackendUnavailable,
    BadVideo,
    backend_order,
    check_backend,
    decode_frames,
    probe_positions,
    probe_video,
)
from fovea.errors import ConfigError


@pytest.fixture(scope="module")
def good_mp4(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("videos") / "ok.mp4"
    write_mp4(path, render_demo_video("grow", np.random.default_rng(0), size=64, num_frames=20), fps=10)
    return path.read_bytes()


@pytest.mark.parametrize("backend", ["decord", "pyav", "torchcodec"])
def test_a_good_video_is_probed(good_mp4, backend):
    info = probe_video(good_mp4, backends=[backend])
    assert (info.num_frames, info.width, info.height, info.backend, info.fallback) == (20, 64, 64, backend, "")
    assert info.fps == pytest.approx(10.0) and info.duration == pytest.approx(2.0)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_files_are_rejected(good_mp4, fraction):
    with pytest.raises(BadVideo, match=r"^corrupt or truncated video \(.+\)$"):
        probe_video(good_mp4[: int(len(good_mp4) * fraction)])


def test_empty_and_non_video_files_are_rejected():
    with pytest.raises(BadVideo, match=r"^empty file \(0 bytes\)$"):
        probe_video(b"")
    with pytest.raises(BadVideo, match=r"^not a readable video \(decord: .+; pyav: .+; torchcodec: .+\)$") as caught:
        probe_video(b"this is a text file named clip.avi\n" * 20)
    assert "\n" not in str(caught.value) and ".cpp:" not in str(caught.value)  # no C++ source locations


def test_too_short_and_mis_sized_frames(tmp_path):
    short = tmp_path / "three.mp4"
    write_mp4(short, render_demo_video("move_left", np.random.default_rng(1), size=64, num_frames=3))
    assert probe_video(short.read_bytes()).num_frames == 3
    with pytest.raises(BadVideo, match=r"^too short: 3 frames, at least 8 needed$"):
        probe_video(short.read_bytes(), min_frames=8)
    odd = tmp_path / "w48.mp4"
    write_mp4(odd, np.zeros((4, 48, 48, 3), dtype=np.uint8))
    with pytest.raises(BadVideo, match=r"^decord returns frames of shape \(48, 48, 4\), not \(48, 48, 3\)$"):
        probe_video(odd.read_bytes(), backends=["decord"])


@pytest.mark.parametrize(("codec", "container"), [("libx264", "mp4"), ("mpeg4", "avi")])
def test_damaged_first_frames_are_a_reason_not_a_crash(tmp_path, codec, container):
    data = write_video(tmp_path / f"v.{container}", codec=codec, container=container, num_frames=12)
    with pytest.raises(BadVideo) as caught:
        probe_video(damage_frames(data, 0, 1, 2))
    reason = str(caught.value)
    assert reason.startswith("damaged: frames do not decode (decord: frame 0 of 12: ")
    assert "; pyav: frame 0 of 12: " in reason and "; torchcodec: frame 0 of 12: " in reason
    assert "\n" not in reason and "Check failed" not in reason and ".cpp:" not in reason  # no C++


def test_damage_in_the_middle_is_found(tmp_path):
    data = write_video(tmp_path / "v.mp4", num_frames=40, gop=10)
    assert keyframes(data) == [0, 10, 20, 30]
    assert probe_positions(40) == [0, 10, 20, 29, 39]  # first, last and three evenly between
    assert probe_video(data).num_frames == 40
    # the first and last frames are intact; decord's decoder thread reads ahead, so its frame number may be earlier
    pattern = r"^damaged: frames do not decode \(decord: frame \d+ of 40: .+; pyav: frame 20 of 40: .+; "
    pattern += r"torchcodec: frame 20 of 40: .+\)$"
    with pytest.raises(BadVideo, match=pattern):
        probe_video(damage_frames(data, 20))


def test_files_decord_misreads_or_cannot_open_fall_back_to_pyav(tmp_path):
    narrow = write_video(tmp_path / "w48.mp4", size=(40, 48), num_frames=6)  # decord: (40, 48, 4) frames
    info = probe_video(narrow)
    assert (info.backend, info.width, info.height, info.num_frames) == ("pyav", 48, 40, 6)
    assert info.fallback == "decord returns frames of shape (40, 48, 4), not (40, 48, 3)"
    frames = decode_frames(narrow, np.arange(6), backend=backend_order("decord", "pyav"))
    assert frames.shape == (6, 40, 48, 3) and frames.dtype == np.uint8
    with pytest.raises(BadVideo, match=r"size must exactly match|decord returns frames of shape"):  # decord 0.6
        decode_frames(narrow, np.arange(6), backend="decord")
    # without a recorded backend (shards made before the column) decoding falls back on its own
    assert np.array_equal(decode_frames(narrow, np.arange(6), backend=backend_order("decord")), frames)
    assert probe_video(narrow, backends=["torchcodec"]).backend == "torchcodec"  # TorchCodec reads it right
    assert np.array_equal(decode_frames(narrow, np.arange(6), backend=backend_order("torchcodec", "pyav")), frames)
    if not can_encode("libsvtav1"):
        pytest.skip("this PyAV has no AV1 encoder")
    av1 = write_video(tmp_path / "av1.mkv", codec="libsvtav1", container="matroska", num_frames=8)
    info = probe_video(av1)
    assert (info.backend, info.num_frames, info.width, info.height) == ("pyav", 8, 64, 64)  # MKV: packets counted
    assert info.fallback.startswith("not a readable video (")  # decord 0.6 knows no AV1
    assert decode_frames(av1, np.array([7, 0, 7]), backend="torchcodec").shape == (3, 64, 64, 3)


def test_backend_order_keeps_the_configured_backend_unless_the_file_rules_it_out():
    assert backend_order("decord") == ("decord", "pyav", "torchcodec")
    assert backend_order("decord", "decord") == ("decord", "pyav", "torchcodec")
    assert backend_order("decord", "pyav") == ("pyav", "torchcodec")  # decord did not read it when it was prepared
    assert backend_order("pyav", "decord") == ("pyav", "decord", "torchcodec")
    assert backend_order("pyav", "pyav") == ("pyav", "torchcodec")
    assert backend_order("torchcodec") == ("torchcodec", "decord", "pyav")
    assert backend_order("torchcodec", "pyav") == ("torchcodec", "pyav")
    assert backend_order("decord", "torchcodec") == ("torchcodec",)  # only TorchCodec read it
    with pytest.raises(ValueError, match="unknown video backend 'ffmpeg'"):
        backend_order("ffmpeg")


def test_no_backend_reading_a_file_gives_each_ones_error():
    with pytest.raises(BadVideo, match=r"^not a readable video \(decord: .+; pyav: .+\)$"):
        decode_frames(b"junk", np.arange(2), backend=("decord", "pyav"))
    with pytest.raises(BadVideo, match=r"^not a readable video \(Failed to open input buffer: .+\)$"):
        decode_frames(b"junk", np.arange(2), backend="torchcodec")


def test_torchcodec_without_ffmpeg_is_one_line_naming_the_fix(good_mp4, monkeypatch):
    import torchcodec.decoders

    def no_ffmpeg(*args, **kwargs):  # what TorchCodec 0.17 raises when no FFmpeg 4-9 shared libraries load
        raise RuntimeError("Could not load libtorchcodec. Likely causes:\n  1. FFmpeg is not properly installed")

    check_backend("torchcodec")  # this machine has them
    monkeypatch.setattr(torchcodec.decoders, "VideoDecoder", no_ffmpeg)
    with pytest.raises(BackendUnavailable) as caught:
        check_backend("torchcodec")
    assert FFMPEG_FIX in str(caught.value) and "apt-get install ffmpeg" in str(caught.value)
    with pytest.raises(ConfigError, match=r"^data\.video_backend=torchcodec: torchcodec cannot load FFmpeg's shared "):
        DecodeClips(ClipSpec(img_size=8, num_frames=2), train=True, backend="torchcodec")
    # a file decord reads is still probed and decoded; one it does not names TorchCodec's missing libraries
    assert probe_video(good_mp4).backend == "decord"
    with pytest.raises(BadVideo, match=r"; torchcodec: torchcodec cannot load FFmpeg's shared libraries"):
        probe_video(b"junk" * 50)
