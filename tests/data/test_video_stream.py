"""Streaming clips: decoding and augmentation (same transform for every frame), seeds, epochs, multi-view views and
their evaluation, the three decoders (decord, PyAV, TorchCodec on the CPU) and all three storage modes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from timm.data import Mixup
from video_files import damage_frames, write_video

from fovea.config import DataConfig
from fovea.data import ClipSpec, DecodeClips, build_video_datasets, prepare_videos
from fovea.data.clips import eval_crops, train_clip
from fovea.data.demo_video import render_demo_video, write_mp4
from fovea.data.prepare_video import read_and_check_videos
from fovea.train.loop import Normalize, apply_mixup, evaluate

SPEC = ClipSpec(img_size=32, num_frames=4, frame_interval=2, scale=(1.1, 1.5), hflip=0.5)
BACKENDS = pytest.mark.parametrize("backend", ["decord", "torchcodec"])  # PyAV: test_decoders_and_storage_modes_agree


@pytest.fixture(scope="module")
def video_rows(tmp_path_factory):
    """Rows of 6 videos (3 of each of two classes), 16 frames of 64x64, as prepare_videos stores them."""
    root = tmp_path_factory.mktemp("clips")
    paths = []
    for index in range(6):
        action = ("move_left", "rotate_clockwise")[index % 2]
        frames = render_demo_video(action, np.random.default_rng(index), size=64, num_frames=16)
        path = root / f"{index}.mp4"
        write_mp4(path, frames, fps=8)
        paths.append(str(path))
    batch = {"path": paths, "label": [i % 2 for i in range(6)], "class_name": ["x"] * 6, "split": ["train"] * 6}
    return {storage: read_and_check_videos(batch, storage=storage).to_pydict() for storage in ("encoded", "reference")}


def _numpy_batch(rows: dict) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(values, dtype=object if name in ("video", "path") else None) for name, values in rows.items()
    }


@BACKENDS
def test_training_clips_are_uint8_seeded_and_vary_by_epoch(video_rows, backend):
    batch = _numpy_batch(video_rows["encoded"])
    decode = DecodeClips(SPEC, train=True, seed=3, backend=backend)
    first = decode(batch)
    assert first["video"].shape == (6, 3, 4, 32, 32) and first["video"].dtype == np.uint8
    assert first["label"].tolist() == [0, 1, 0, 1, 0, 1]
    row = {name: values[0] for name, values in video_rows["encoded"].items()}
    assert np.array_equal(decode.views(row, 0)[0], DecodeClips(SPEC, train=True, seed=3).views(row, 0)[0])  # decord
    assert not np.array_equal(decode.views(row, 0)[0], decode.views(row, 1)[0])  # next epoch, new clip
    assert not np.array_equal(decode.views(row, 0)[0], DecodeClips(SPEC, train=True, seed=4).views(row, 0)[0])


def test_one_transform_for_every_frame_of_a_clip():
    still = np.repeat(np.random.default_rng(0).integers(0, 255, (1, 40, 56, 3), dtype=np.uint8), 4, axis=0)
    for seed in range(10):
        clip = train_clip(still, SPEC, np.random.default_rng(seed))  # (3, T, S, S)
        assert clip.shape == (3, 4, 32, 32)
        assert all(np.array_equal(clip[:, 0], clip[:, t]) for t in range(1, 4))  # same crop, scale and flip
    no_flip, flip = (ClipSpec(img_size=32, num_frames=4, hflip=p) for p in (0.0, 1.0))
    moving = np.random.default_rng(1).integers(0, 255, (4, 40, 56, 3), dtype=np.uint8)
    plain = train_clip(moving, no_flip, np.random.default_rng(5))
    assert np.array_equal(train_clip(moving, flip, np.random.default_rng(5)), plain[..., ::-1])


@BACKENDS
def test_evaluation_views_are_fixed_and_cover_the_video(video_rows, backend):
    spec = ClipSpec(img_size=32, num_frames=4, frame_interval=2, num_temporal_clips=3, num_spatial_crops=3)
    batch = _numpy_batch(video_rows["encoded"])
    views = DecodeClips(spec, train=False, backend=backend)(batch)["video"]
    assert views.shape == (6, 9, 3, 4, 32, 32)
    assert np.array_equal(views, DecodeClips(spec, train=False)(batch)["video"])  # no randomness; decord's pixels
    assert len({hashlib.sha1(view.tobytes()).hexdigest() for view in views[0]}) == 9
    single = DecodeClips(ClipSpec(img_size=32, num_frames=4, frame_interval=2), train=False)(batch)["video"]
    assert single.shape == (6, 3, 4, 32, 32)
    # three crops of a 36x48 frame: left, centre and right along the long side
    frame = np.arange(36 * 48, dtype=np.uint8).reshape(1, 36, 48, 1).repeat(3, axis=3)
    crops = eval_crops(frame, ClipSpec(img_size=36, num_frames=1, crop_pct=1.0, num_spatial_crops=3))
    assert [int(crop[0, 0, 0, 0]) for crop in crops] == [int(frame[0, 0, left, 0]) for left in (0, 6, 12)]


def test_decoders_and_storage_modes_agree(video_rows):
    spec = ClipSpec(img_size=32, num_frames=4, frame_interval=3, num_temporal_clips=2)
    encoded = _numpy_batch(video_rows["encoded"])
    reference = _numpy_batch(video_rows["reference"])
    base = DecodeClips(spec, train=False)(encoded)["video"]
    assert np.array_equal(DecodeClips(spec, train=False, storage="reference")(reference)["video"], base)
    assert np.array_equal(DecodeClips(spec, train=False, backend="pyav")(encoded)["video"], base)
    assert np.array_equal(DecodeClips(spec, train=False, backend="torchcodec")(encoded)["video"], base)
    torchcodec = DecodeClips(spec, train=False, storage="reference", backend="torchcodec", decode_threads=0)
    assert np.array_equal(torchcodec(reference)["video"], base)


def test_pre_decoded_rows_sample_like_encoded_ones(video_rows):
    paths = video_rows["encoded"]["path"][:2]
    batch = {"path": paths, "label": [0, 1], "class_name": ["x", "y"], "split": ["train"] * 2}
    decoded = _numpy_batch(read_and_check_videos(batch, storage="decoded").to_pydict())
    spec = ClipSpec(img_size=32, num_frames=4, frame_interval=2)
    clips = DecodeClips(spec, train=False, storage="decoded")(decoded)["video"]
    encoded = {name: values[:2] for name, values in _numpy_batch(video_rows["encoded"]).items()}
    assert np.array_equal(clips, DecodeClips(spec, train=False)(encoded)["video"])


@BACKENDS
def test_rows_that_no_longer_decode_are_skipped(video_rows, backend):
    batch = _numpy_batch(video_rows["encoded"])
    batch["video"] = batch["video"].copy()
    batch["video"][1] = b"garbage"
    out = DecodeClips(SPEC, train=True, backend=backend)(batch)
    assert out["video"].shape[0] == 5 and out["label"].tolist() == [0, 0, 1, 0, 1]
    empty = DecodeClips(SPEC, train=True, backend=backend)({name: values[1:2] for name, values in batch.items()})
    assert empty["video"].shape == (0, 3, 4, 32, 32)


def test_clips_of_files_decord_misreads_are_decoded_with_pyav(tmp_path):
    narrow = tmp_path / "w48.mp4"
    write_video(narrow, size=(40, 48), num_frames=12)  # decord 0.6 returns (40, 48, 4) frames
    rows = read_and_check_videos({"path": [str(narrow)], "label": [1], "class_name": ["x"], "split": ["train"]})
    rows = rows.to_pydict()
    assert rows["backend"] == ["pyav"] and rows["error"] == [""] and rows["note"][0].startswith("read with pyav: ")
    spec = ClipSpec(img_size=32, num_frames=4, frame_interval=2)
    batch = _numpy_batch(rows)
    clips = DecodeClips(spec, train=False)(batch)  # data.video_backend=decord, the default
    assert clips["video"].shape == (1, 3, 4, 32, 32) and clips["label"].tolist() == [1]
    del batch["backend"]  # shards made before the column: decord fails, PyAV reads it
    assert np.array_equal(DecodeClips(spec, train=False)(batch)["video"], clips["video"])
    assert np.array_equal(DecodeClips(spec, train=False, backend="torchcodec")(batch)["video"], clips["video"])


@BACKENDS
def test_a_clip_that_fails_mid_epoch_is_skipped_and_named(video_rows, tmp_path, caplog, backend):
    encoded = dict(video_rows["encoded"])
    gop = write_video(tmp_path / "gop.mp4", num_frames=16, gop=4)
    damaged = {
        name: values[0]
        for name, values in read_and_check_videos(
            {"path": [str(tmp_path / "gop.mp4")], "label": [0], "class_name": ["x"], "split": ["train"]}
        )
        .to_pydict()
        .items()
    }
    damaged.update(video=damage_frames(gop, 5, 6, 7), path="/data/damaged-after-preparation.mp4")
    rows = {name: [*values, damaged[name]] for name, values in encoded.items()}
    rows["label"][1] = None  # not a decoder's error, still a skipped row, never a failed task
    spec = ClipSpec(img_size=32, num_frames=4, frame_interval=1, num_temporal_clips=4)  # views over every frame
    with caplog.at_level("WARNING", logger="fovea.data.decode_failures"):
        out = DecodeClips(spec, train=False, backend=backend)(_numpy_batch(rows))
    assert out["label"].tolist() == [0, 0, 1, 0, 1]  # rows 1 and 6 skipped, the batch delivered
    assert "skipping video /data/damaged-after-preparation.mp4: it does not decode (" in caplog.text
    assert f"skipping video {encoded['path'][1]}: it does not decode (TypeError: " in caplog.text
    reference = _numpy_batch(video_rows["reference"])
    reference["path"] = np.asarray([*reference["path"][:5], str(tmp_path / "moved.mp4")], dtype=object)
    assert DecodeClips(SPEC, train=True, storage="reference", backend=backend)(reference)["video"].shape[0] == 5


def test_stream_through_ray_data(ray_local, tmp_path):
    raw = tmp_path / "raw"
    for index in range(12):
        action = ("grow", "shrink")[index % 2]
        (raw / action).mkdir(parents=True, exist_ok=True)
        frames = render_demo_video(action, np.random.default_rng(index), size=64, num_frames=12)
        write_mp4(raw / action / f"{index}.mp4", frames, fps=8)
    manifest = prepare_videos(raw, tmp_path / "prepared", val_fraction=0.34, shard_rows=2)
    assert len(manifest["splits"]["train"]["shards"]) == 4  # several shards, so there is an order to shuffle
    cfg = DataConfig(num_frames=4, frame_interval=2, hflip=0.0, decode_batch_size=2, num_temporal_clips=2)

    def epoch(datasets, name="train"):
        return [
            (int(label), hashlib.sha1(clip.tobytes()).hexdigest())
            for batch in datasets[name].iter_batches(batch_size=4, batch_format="numpy")
            for clip, label in zip(batch["video"], batch["label"], strict=True)
        ]

    datasets = build_video_datasets(manifest, cfg, img_size=32, num_frames=4, seed=7)
    assert set(datasets) == {"train", "val", "val_views"}
    first, second = epoch(datasets), epoch(datasets)
    assert len(first) == len(second) == manifest["splits"]["train"]["count"] == 8
    assert first != second  # new shard order and new clips every epoch
    again = epoch(build_video_datasets(manifest, cfg, img_size=32, num_frames=4, seed=7))
    assert sorted(again) == sorted(first)  # same seed, same clips (Ray may interleave blocks differently)
    other = epoch(build_video_datasets(manifest, cfg, img_size=32, num_frames=4, seed=8))
    assert sorted(other) != sorted(first)
    views = next(iter(datasets["val_views"].iter_torch_batches(batch_size=4)))["video"]
    assert views.shape[1:] == (2, 3, 4, 32, 32) and views.dtype == torch.uint8
    assert sorted(epoch(datasets, "val")) == sorted(epoch(datasets, "val"))  # evaluation clips never change


def test_decode_failures_in_ray_data_tasks_reach_the_runs_tally(ray_local, video_rows):
    from fovea.data.decode_failures import open_tally, take_failures

    rows = dict(video_rows["encoded"])
    rows["video"] = [*rows["video"][:2], b"garbage", *rows["video"][3:]]
    open_tally()
    assert take_failures().rows == 0  # the tally is up, and empty: an earlier run's counts are gone
    dataset = ray_local.data.from_items(
        [{name: values[i] for name, values in rows.items()} for i in range(6)]
    ).map_batches(DecodeClips(SPEC, train=True), batch_size=2, batch_format="numpy")
    assert sum(len(batch["label"]) for batch in dataset.iter_batches(batch_format="numpy")) == 5
    failures = take_failures()
    assert (failures.rows, failures.first_path) == (1, rows["path"][2])
    assert failures.first_reason.startswith("not a readable video (decord: ")
    assert take_failures().rows == 0  # taken: the next epoch counts from zero


class MeanColour(torch.nn.Module):
    """Toy video 'model': the logit of class c is the clip's mean value in channel c."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4))


def test_multi_view_evaluation_averages_logits_per_video():
    # video 0: views favour classes 1, 2 and 0, but their mean favours 0; video 1: every view says 2
    views = torch.zeros(2, 3, 3, 2, 4, 4, dtype=torch.uint8)  # (B, V, C, T, H, W)
    for view, colour in enumerate([(100, 120, 0), (100, 0, 110), (140, 100, 100)]):
        for channel, value in enumerate(colour):
            views[0, view, channel] = value
    views[1, :, 2] = 50
    batch = {"video": views, "label": torch.tensor([0, 2])}
    identity = Normalize((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # (x - 0) / 1: raw values as logits
    result = evaluate(MeanColour(), [batch], normalize=identity, device=torch.device("cpu"), precision="fp32")
    assert result["top1"] == 100.0 and result["count"] == 2
    mean_logits = views.float().mean(dim=(3, 4, 5)).mean(dim=1)  # (B, C)
    expected = torch.nn.functional.cross_entropy(mean_logits, torch.tensor([0, 2]))
    assert result["loss"] == pytest.approx(expected.item(), rel=1e-5)
    # the same views one at a time: video 0 is right in only one of three
    per_view = [{"video": views[:, v], "label": torch.tensor([0, 2])} for v in range(3)]
    singles = [evaluate(MeanColour(), [b], normalize=identity, device=torch.device("cpu"))["top1"] for b in per_view]
    assert singles == [50.0, 50.0, 100.0]


def test_normalize_and_mixup_handle_clips():
    clips = torch.randint(0, 256, (4, 3, 5, 8, 8), dtype=torch.uint8)
    normalized = Normalize((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))(clips)
    assert torch.allclose(normalized[:, 1], (clips[:, 1].float() / 255 - 0.4) / 0.2)
    torch.manual_seed(0)
    np.random.seed(0)  # timm's Mixup draws lambda and the box from numpy's global generator, which other tests move
    cutmix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, num_classes=3)
    flat = (torch.arange(4.0) * 50 + 1).view(4, 1, 1, 1, 1).expand(4, 3, 5, 8, 8).contiguous()  # one value per clip
    mixed, targets = apply_mixup(cutmix, flat.clone(), torch.tensor([0, 1, 2, 0]))
    assert mixed.shape == flat.shape and targets.shape == (4, 3)
    changed = mixed != flat  # (B, C, T, H, W): the box cut from the partner clip
    assert changed.any()
    assert all(torch.equal(changed[:, :, 0], changed[:, :, t]) for t in range(5))  # the same box in every frame


@BACKENDS
def test_decoder_memory_stays_flat(video_rows, backend):
    from fovea.data.bench import rss_over_decodes

    rows = [{name: values[i] for name, values in video_rows["encoded"].items()} for i in range(6)]
    decode = DecodeClips(SPEC, train=True, backend=backend)
    trace = rss_over_decodes(rows, lambda row, count: decode.views(row, count), total=600, every=100)
    assert [count for count, _ in trace] == [0, 100, 200, 300, 400, 500, 600]
    growth = trace[-1][1] - trace[1][1]  # after the first 100 decodes have warmed the allocators
    assert growth < 16, trace  # MiB; a reader kept alive per clip would add megabytes every hundred decodes


def test_ingest_benchmark_runs_both_paths_over_every_row(ray_local, video_rows, tmp_path):
    from fovea.data.bench import run_benchmark

    raw = tmp_path / "raw"
    for index, path in enumerate(video_rows["encoded"]["path"]):
        (raw / f"c{index % 2}").mkdir(parents=True, exist_ok=True)
        (raw / f"c{index % 2}" / f"{index}.mp4").write_bytes(open(path, "rb").read())
    manifest = prepare_videos(raw, tmp_path / "prepared", val_fraction=0.34, shard_rows=2)
    cfg = DataConfig(num_frames=4, frame_interval=2, batch_size=2, decode_batch_size=2)
    results = run_benchmark(manifest, cfg, kind="video", img_size=32, workers=2, epochs=2, rss_decodes=200)
    ray_data, loader, persistent = results["paths"]
    train_rows = manifest["splits"]["train"]["count"]
    assert (ray_data["name"], loader["name"]) == ("Ray Data", "DataLoader")
    assert ray_data["items"] == loader["items"] == persistent["items"] == 2 * train_rows
    assert results["ratio"] == pytest.approx(ray_data["warm_items_per_s"] / loader["warm_items_per_s"])
    assert ray_data["peak_mb"] >= ray_data["baseline_mb"] > 0
    assert [count for count, _ in results["rss_trace"]] == [0, 100, 200]
    assert results["rss_growth_mb"] == results["rss_trace"][-1][1] - results["rss_trace"][2][1]
    # the three decoders on the same clips (one spawned process, one turn each): every clip, identical pixels
    from fovea.data.bench import compare_backends, format_backends

    table = compare_backends(manifest, cfg, img_size=32, backends=["decord", "pyav", "torchcodec"], workers=1, rounds=1)
    assert [(row["backend"], row["clips"], row["failed"]) for row in table] == [
        (name, train_rows, 0) for name in ("decord", "pyav", "torchcodec")
    ]
    assert all(row["same_as_first"] == 1.0 and row["cpu_s_per_clip"] > 0 for row in table)
    assert "torchcodec" in format_backends(table, where="x", rows=train_rows, workers=1, spec_text="4x2")
