"""Preparing video datasets: bad files rejected with reasons, short videos kept and noted, three storage modes,
Kinetics-style lists with segments."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fovea.data import load_manifest, prepare_videos, scan_source
from fovea.data.demo_video import render_demo_video, write_mp4
from fovea.data.prepare import run_preparation
from fovea.data.prepare_video import check_video, read_and_check_videos
from fovea.data.video import BadVideo

SCRIPT = Path(__file__).resolve().parents[2] / "pipelines" / "prepare_videos.py"


def _pipeline_main():
    """The pipeline script's ``main``, loaded in this process so it shares the module's Ray instance."""
    spec = importlib.util.spec_from_file_location("prepare_videos_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _write(path, action="move_right", frames=12, size=64, seed=0, fps=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, render_demo_video(action, np.random.default_rng(seed), size=size, num_frames=frames), fps=fps)
    return path


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Two classes of 4 good videos each, plus the four kinds of trouble the issue names, in class ``grow``."""
    root = tmp_path_factory.mktemp("messy") / "videos"
    for class_id, action in enumerate(("grow", "shrink")):
        for index in range(4):
            _write(root / action / f"{index}.mp4", action, seed=10 * class_id + index)
    good = (root / "grow" / "0.mp4").read_bytes()
    (root / "grow" / "zero.mp4").write_bytes(b"")
    (root / "grow" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "grow" / "notes.avi").write_text("this is a text file, not a video\n" * 5)
    _write(root / "grow" / "three.mp4", "grow", frames=3, seed=99)
    return root


def test_preparation_handles_each_bad_file_as_documented(ray_local, messy_folder, tmp_path, capsys):
    main = _pipeline_main()
    out = tmp_path / "prepared"
    assert main([str(messy_folder), str(out), "--val-fraction", "0.25", "--shard-rows", "3"]) == 0
    printed = capsys.readouterr().out
    manifest = load_manifest(out)
    assert manifest["kind"] == "video" and manifest["storage"] == "encoded"
    assert manifest["classes"] == ["grow", "shrink"]
    reasons = {entry["path"].rsplit("/", 1)[1]: entry["reason"] for entry in manifest["rejected"]}
    assert set(reasons) == {"zero.mp4", "truncated.mp4", "notes.avi"}
    assert reasons["zero.mp4"] == "empty file (0 bytes)"
    assert reasons["truncated.mp4"].startswith("corrupt or truncated video (")
    assert reasons["notes.avi"].startswith("not a readable video (")
    assert all("\n" not in reason for reason in reasons.values())
    # the 3-frame video is kept (clips loop over it) and listed
    assert [entry["path"].rsplit("/", 1)[1] for entry in manifest["notes"]] == ["three.mp4"]
    assert manifest["notes"][0]["note"].startswith("short: 3 frames")
    splits = manifest["splits"]
    assert splits["train"]["count"] + splits["val"]["count"] == 9
    assert splits["val"]["class_counts"] == {"grow": 1, "shrink": 1}
    assert len(splits["train"]["shards"]) == 3  # 7 rows at about 3 per shard

    rows = pq.read_table(splits["train"]["shards"] + splits["val"]["shards"]).to_pylist()
    by_name = {row["path"].rsplit("/", 1)[1] + row["class_name"]: row for row in rows}
    three = by_name["three.mp4grow"]
    assert (three["num_frames"], three["width"], three["height"], three["start_frame"]) == (3, 64, 64, 0)
    assert three["fps"] == pytest.approx(8.0) and three["duration"] == pytest.approx(3 / 8)
    full = by_name["1.mp4shrink"]
    assert full["num_frames"] == 12 and full["video"] == (messy_folder / "shrink" / "1.mp4").read_bytes()
    assert "rejected: 3" in printed and "kept with a note: 1" in printed


def test_too_short_videos_can_be_rejected_instead(messy_folder):
    data = (messy_folder / "grow" / "three.mp4").read_bytes()
    assert check_video(data, min_frames=4)["note"].startswith("short: 3 frames (fewer than 4)")
    assert check_video(data, min_frames=3)["note"] == ""
    with pytest.raises(BadVideo, match=r"^too short: 3 frames, at least 8 needed$"):
        check_video(data, min_frames=8, too_short="reject")


def test_by_reference_and_pre_decoded_rows(messy_folder):
    path = str(messy_folder / "shrink" / "2.mp4")
    batch = {"path": [path] * 2, "label": [1, 1], "class_name": ["shrink"] * 2, "split": ["train"] * 2}
    referenced = read_and_check_videos(batch, storage="reference").to_pylist()[0]
    assert referenced["video"] == b"" and referenced["path"] == path and referenced["num_frames"] == 12

    decoded = read_and_check_videos(batch, storage="decoded", pre_decode_size=32, pre_decode_frames=6).to_pylist()[0]
    assert (decoded["num_frames"], decoded["height"], decoded["width"]) == (6, 32, 32)
    frames = np.frombuffer(decoded["video"], np.uint8).reshape(6, 32, 32, 3)
    assert frames.std() > 5  # real pixels, not zeros
    assert decoded["fps"] == pytest.approx(6 / (12 / 8))  # frames kept over the same duration
    small = read_and_check_videos(batch, storage="decoded", pre_decode_size=128).to_pylist()[0]
    assert (small["num_frames"], small["height"]) == (12, 64)  # never upscaled; every frame by default


def test_kinetics_style_list_with_segments(messy_folder, tmp_path):
    clip = _write(tmp_path / "long.mp4", "rotate_clockwise", frames=40, fps=10)  # 4 s
    listing = tmp_path / "train.csv"
    listing.write_text(
        "label,path,time_start,time_end,split\n"
        f"spin,{clip},1.0,2.5,train\n"
        f"spin,{clip},3.0,,train\n"
        f"spin,{clip},5.0,6.0,val\n"
        f"grow,{messy_folder / 'grow' / '1.mp4'},,,val\n"
        "grow,s3://bucket/clips/x.mp4,,,train\n"
    )
    items, classes = scan_source(listing, segments=True)
    assert classes == ["grow", "spin"]
    assert [(item["start"], item["end"]) for item in items if item["class_name"] == "spin"] == [
        (1.0, 2.5),
        (3.0, None),
        (5.0, 6.0),
    ]
    assert "s3://bucket/clips/x.mp4" in [item["path"] for item in items]  # URIs are kept as they are
    with pytest.raises(ValueError, match="segments are for videos"):
        scan_source(listing)

    local = [item for item in items if not item["path"].startswith("s3://")]
    columns = {
        name: [item[name] for item in local] for name in ("path", "label", "class_name", "split", "start", "end")
    }
    rows = read_and_check_videos(columns, storage="reference").to_pylist()
    spin = [row for row in rows if row["class_name"] == "spin"]
    assert [(row["start_frame"], row["num_frames"]) for row in spin] == [(10, 15), (30, 10), (0, 0)]
    assert spin[2]["error"] == "segment starts at 5 s, after the video's end (4.00 s)"
    assert spin[0]["duration"] == pytest.approx(1.5)


def test_a_label_outside_the_class_list_stops_before_any_shard(messy_folder, tmp_path):
    items, classes = scan_source(messy_folder, segments=True)
    items[-1] = {**items[-1], "class_name": "spin"}
    with pytest.raises(ValueError) as caught:
        run_preparation(
            messy_folder, tmp_path / "out", items, classes, kind="video", check=read_and_check_videos,
            check_kwargs={}, options={}, shard_rows=10, seed=0, overwrite=False, num_cpus=1,
        )  # fmt: skip
    assert str(caught.value) == (
        f"{items[-1]['path']} (in {messy_folder}) has label 'spin', which is not one of the classes: grow, shrink"
    )
    assert list(tmp_path.iterdir()) == []  # no OUT, no temporary folder


def test_prepare_rejects_bad_arguments_before_ray(messy_folder, tmp_path):
    with pytest.raises(ValueError, match="storage must be one of"):
        prepare_videos(messy_folder, tmp_path / "a", storage="zip")
    with pytest.raises(ValueError, match="too_short must be one of"):
        prepare_videos(messy_folder, tmp_path / "b", too_short="drop")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "other.txt").write_text("x")
    with pytest.raises(FileExistsError, match="non-empty folder"):
        prepare_videos(messy_folder, tmp_path / "c")


def test_copies_links_and_fifos_among_videos_are_accounted_for(ray_local, tmp_path):
    """Issue 21: a val video byte-identical to a train one is kept in train only, a dangling .mp4 link and a FIFO are
    rejected (the FIFO never opened), and every row carries the SHA-256 of the bytes read."""
    import hashlib
    import os

    root = tmp_path / "videos"
    for split, seed in (("train", 0), ("val", 1)):
        for class_id, action in enumerate(("grow", "shrink")):
            _write(root / split / action / f"{seed}.mp4", action, frames=8, seed=10 * class_id + seed)
    (root / "val" / "grow" / "copy.mp4").write_bytes((root / "train" / "grow" / "0.mp4").read_bytes())
    (root / "train" / "grow" / "gone.mp4").symlink_to(root / "elsewhere" / "clip.mp4")
    os.mkfifo(root / "train" / "shrink" / "pipe.mp4")

    path = str(root / "val" / "grow" / "copy.mp4")
    row = read_and_check_videos({"path": [path], "label": [0], "class_name": ["grow"], "split": ["val"]}).to_pylist()
    assert row[0]["content_hash"] == hashlib.sha256((root / "train" / "grow" / "0.mp4").read_bytes()).hexdigest()

    manifest = prepare_videos(root, tmp_path / "prepared", storage="reference", dedup="split")
    assert {name: split["count"] for name, split in manifest["splits"].items()} == {"train": 2, "val": 2}
    assert [(entry["path"], entry["kept"], entry["dropped"]) for entry in manifest["duplicates"]] == [
        (path, str(root / "train" / "grow" / "0.mp4"), True)
    ]
    assert {entry["path"].rsplit("/", 1)[1]: entry["reason"] for entry in manifest["rejected"]} == {
        "gone.mp4": f"dangling symbolic link: its target {root}/elsewhere/clip.mp4 does not exist",
        "pipe.mp4": "not a regular file (FIFO)",
    }
    rows = pq.read_table(manifest["splits"]["val"]["shards"]).to_pylist()
    assert sorted(row["path"].rsplit("/", 2)[1] for row in rows) == ["grow", "shrink"]
    assert "content_hash" not in rows[0]  # bookkeeping, not a stored column

    kept = prepare_videos(root, tmp_path / "kept", storage="reference", dedup="keep")
    assert kept["splits"]["val"]["count"] == 3 and [entry["dropped"] for entry in kept["duplicates"]] == [False]


def test_damaged_and_decord_unreadable_videos_are_rows_not_a_crashed_job(ray_local, tmp_path, capsys):
    """Issue 21: damaged first frames (the probe used to raise out of the Ray job), damage in the middle (the probe
    used to look only at the first and last frame), and files decord misreads (48 px wide) or cannot open (AV1 in
    MKV), which PyAV reads: recorded as the rows' backend and listed in the notes."""
    from video_files import can_encode, damage_frames, write_video

    root = tmp_path / "videos"
    for class_id, action in enumerate(("grow", "shrink")):
        for index in range(2):
            _write(root / action / f"{index}.mp4", action, seed=10 * class_id + index)
    good = write_video(root / "grow" / "gop.mp4", num_frames=40, gop=10)
    (root / "grow" / "first.mp4").write_bytes(damage_frames(good, 0, 1))
    (root / "grow" / "middle.mp4").write_bytes(damage_frames(good, 20))
    write_video(root / "shrink" / "w48.mp4", size=(40, 48), num_frames=12)
    pyav_only = {"w48.mp4"}
    if can_encode("libsvtav1"):
        write_video(root / "shrink" / "av1.mkv", codec="libsvtav1", container="matroska", num_frames=12)
        pyav_only.add("av1.mkv")

    out = tmp_path / "prepared"
    assert _pipeline_main()([str(root), str(out), "--by-reference"]) == 0
    manifest = load_manifest(out)
    reasons = {entry["path"].rsplit("/", 1)[1]: entry["reason"] for entry in manifest["rejected"]}
    assert set(reasons) == {"first.mp4", "middle.mp4"}
    assert reasons["first.mp4"].startswith("damaged: frames do not decode (decord: frame 0 of 40: ")
    assert "; pyav: frame 0 of 40: " in reasons["first.mp4"] and "; torchcodec: frame 0 of 40: " in reasons["first.mp4"]
    assert reasons["middle.mp4"].startswith("damaged: frames do not decode (decord: frame ")  # decord reads ahead
    assert "; pyav: frame 20 of 40: " in reasons["middle.mp4"]
    shards = [shard for split in manifest["splits"].values() for shard in split["shards"]]
    rows = {row["path"].rsplit("/", 1)[1]: row for row in pq.read_table(shards).to_pylist()}
    assert {name for name, row in rows.items() if row["backend"] == "pyav"} == pyav_only
    assert {name for name, row in rows.items() if row["backend"] == "decord"} == {"0.mp4", "1.mp4", "gop.mp4"}
    assert (rows["w48.mp4"]["width"], rows["w48.mp4"]["height"], rows["w48.mp4"]["num_frames"]) == (48, 40, 12)
    notes = {entry["path"].rsplit("/", 1)[1]: entry["note"] for entry in manifest["notes"]}
    assert set(notes) == pyav_only and all(note.startswith("read with pyav: ") for note in notes.values())
    assert manifest["video_backends"] == ["decord", "pyav", "torchcodec"]
    assert "rejected: 2" in capsys.readouterr().out


def test_huge_and_odd_video_files_are_rejected_without_being_read(tmp_path: Path) -> None:
    """Issue 21: a 2 GiB (sparse) ``.mp4`` and a FIFO are refused from ``stat`` alone (``--max-file-mb``, 512 MiB by
    default for videos): the check's memory does not grow by the file's size, and nothing blocks on the FIFO."""
    import os
    import resource

    huge, pipe = tmp_path / "huge.mp4", tmp_path / "pipe.mp4"
    with open(huge, "wb") as file:
        file.truncate(2 << 30)
    os.mkfifo(pipe)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch = {"path": [str(huge), str(pipe)], "label": [0, 0], "class_name": ["a", "a"], "split": ["train"] * 2}
    rows = read_and_check_videos(batch).to_pylist()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert [row["error"] for row in rows] == [
        "file too large: 2048.0 MB, over max_file_mb=512",
        "not a regular file",
    ]
    assert grown_mb < 100
    (tmp_path / "two.mp4").write_bytes(bytes(2 << 20))
    one = {"path": [str(tmp_path / "two.mp4")], "label": [0], "class_name": ["a"], "split": ["train"]}
    assert read_and_check_videos(one, max_file_mb=1).to_pylist()[0]["error"] == (
        "file too large: 2.0 MB, over max_file_mb=1"
    )
    with pytest.raises(ValueError, match="max_file_mb must be a positive number"):
        prepare_videos(tmp_path, tmp_path / "out", max_file_mb=0)
