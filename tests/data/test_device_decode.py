"""``data.jpeg_decode=device``: crop planning in the Ray Data tasks, decoding and cropping on the training device
(the CPU here; the same code runs nvJPEG on a GPU)."""

from __future__ import annotations

import io
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from fovea.config import ConfigError, build_config
from fovea.data.device_decode import PlanCrops, center_crop_box, decode_batch, random_resized_crop_box
from fovea.data.transforms import DecodeImages

CPU = torch.device("cpu")


def _smooth_image(height: int, width: int, seed: int) -> Image.Image:
    """A smooth picture (gradients and a disc): JPEG keeps it well, so decoders can be compared closely."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, min(height, width) / 4
    disc = ((y - cy) ** 2 + (x - cx) ** 2 < r**2).astype(np.float32)
    channels = [x / width * 200, y / height * 200, 60 + 150 * disc]
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))


def _encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _batch(images: list[bytes]) -> dict[str, np.ndarray]:
    column = np.empty(len(images), dtype=object)
    column[:] = images
    return {"image": column, "label": np.arange(len(images), dtype=np.int64)}


def test_eval_view_matches_the_cpu_path():
    images = [_encode(_smooth_image(h, w, i), quality=95) for i, (h, w) in enumerate([(60, 80), (96, 64), (48, 48)])]
    batch = _batch(images)
    cpu = DecodeImages(32, train=False, crop_pct=0.875)(batch)
    planned = PlanCrops(32, train=False, crop_pct=0.875)(batch)
    device = decode_batch(planned, img_size=32, device=CPU)
    assert device["image"].shape == (3, 3, 32, 32) and device["image"].dtype == torch.uint8
    assert device["label"].tolist() == [0, 1, 2]
    difference = (device["image"].float() - torch.from_numpy(cpu["image"]).float()).abs()
    assert difference.mean() < 3.0, difference.mean()  # the same view; the two resamplers round differently


def test_training_crops_are_in_bounds_flipped_and_seeded():
    images = [_encode(_smooth_image(64, 96, i)) for i in range(8)]
    plan = PlanCrops(32, train=True, hflip=0.5, seed=3)(_batch(images))
    again = PlanCrops(32, train=True, hflip=0.5, seed=3)(_batch(images))
    np.testing.assert_array_equal(plan["box"], again["box"])
    top, left, height, width = plan["box"].T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 64).all() and (left + width <= 96).all()
    assert 0 < plan["flip"].sum() < 8
    out = decode_batch(plan, img_size=32, device=CPU)
    assert out["image"].shape == (8, 3, 32, 32)
    # a flipped crop is the mirror image of the same crop unflipped
    unflipped = dict(plan, flip=np.zeros(8, dtype=bool))
    plain = decode_batch(unflipped, img_size=32, device=CPU)["image"]
    index = int(np.flatnonzero(plan["flip"])[0])
    torch.testing.assert_close(out["image"][index], plain[index].flip(-1))


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = random.Random(0)
    for _ in range(500):
        height, width = rng.randint(1, 300), rng.randint(1, 300)
        top, left, h, w = random_resized_crop_box(height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), rng=rng)
        assert 0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= height and left + w <= width
    # a square image with room for every box: the area stays in the scale range
    for _ in range(200):
        _, _, h, w = random_resized_crop_box(200, 200, scale=(0.25, 0.5), ratio=(1.0, 1.0), rng=rng)
        assert 0.23 <= h * w / 40000 <= 0.52
    assert center_crop_box(100, 200, img_size=32, crop_pct=0.875) == (5, 55, 89, 89)


def test_other_formats_are_reencoded_and_broken_rows_skipped():
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("fovea.data.device_decode")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.WARNING  # whatever other tests did to logging
    png = _encode(_smooth_image(40, 40, 0), "PNG")
    cmyk = _encode(_smooth_image(40, 40, 1).convert("CMYK"), "JPEG")
    rotated_image = _smooth_image(30, 50, 2)
    exif = rotated_image.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90 degrees
    rotated = _encode(rotated_image, "JPEG", exif=exif.tobytes())
    plain = _encode(_smooth_image(40, 40, 3), "JPEG")
    plan = PlanCrops(16, train=False)(_batch([png, b"not an image", cmyk, rotated, plain]))
    assert plan["label"].tolist() == [0, 2, 3, 4]  # the broken row is gone, the rest kept in order
    assert plan["jpeg"][3] == plain  # a plain JPEG travels as it is
    assert all(bytes(jpeg[:2]) == b"\xff\xd8" for jpeg in plan["jpeg"])
    # the rotated one: its box is in the upright 50 x 30 frame (centre square of side 30 * 16 / 18)
    assert plan["box"][2].tolist() == [11, 1, 27, 27]
    out = decode_batch(plan, img_size=16, device=CPU)
    assert out["image"].shape == (4, 3, 16, 16)
    logger.removeHandler(handler)
    logger.setLevel(level)
    assert any("3 images in this batch were not plain JPEGs" in m for m in messages)
    assert any("does not decode" in m for m in messages)


def test_empty_batches_and_config_checks():
    empty = PlanCrops(16, train=True)(_batch([]))
    assert decode_batch(empty, img_size=16, device=CPU)["image"].shape == (0, 3, 16, 16)
    assert build_config([{"data": {"jpeg_decode": "device"}}]).data.jpeg_decode == "device"
    with pytest.raises(ConfigError, match="RandAugment"):
        build_config([{"data": {"jpeg_decode": "device", "randaugment_ops": 2}}])


# --- data.video_decode=device: PlanClips in the tasks, decode_clip_batch on the worker (TorchCodec on the CPU here;
# the same code asks TorchCodec for device="cuda", NVDEC, on a GPU worker)


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory):
    from video_files import write_video

    from fovea.data.prepare_video import read_and_check_videos

    root = tmp_path_factory.mktemp("device-clips")
    paths = [str(root / f"{index}.mp4") for index in range(3)]
    for index in range(3):
        write_video(root / f"{index}.mp4", num_frames=16, size=(48, 64), gop=5, seed=index)
    batch = {"path": paths, "label": [0, 1, 2], "class_name": ["a", "b", "c"], "split": ["train"] * 3}
    rows = read_and_check_videos(batch).to_pydict()
    return {
        name: np.asarray(values, dtype=object if name in ("video", "path") else None) for name, values in rows.items()
    }


def test_video_clips_decoded_on_the_device_match_the_cpu_path(clip_rows):
    from fovea.data.clips import ClipSpec, DecodeClips
    from fovea.data.device_decode import PlanClips, decode_clip_batch

    train_spec = ClipSpec(img_size=32, num_frames=4, frame_interval=2, scale=(1.1, 1.6), hflip=0.5)
    views_spec = ClipSpec(img_size=32, num_frames=4, frame_interval=2, num_temporal_clips=2, num_spatial_crops=3)
    for spec, train, shape in ((train_spec, True, (3, 3, 4, 32, 32)), (views_spec, False, (3, 6, 3, 4, 32, 32))):
        planned = PlanClips(spec, train=train, seed=5)(clip_rows)
        assert (
            planned["indices"].shape == (3, 4 * (1 if train else 2))
            and planned["backends"][0] == "torchcodec,decord,pyav"
        )
        out = decode_clip_batch(planned, num_frames=4, img_size=32, device=CPU)
        assert out["video"].shape == shape and out["video"].dtype == torch.uint8 and out["label"].tolist() == [0, 1, 2]
        expected = DecodeClips(spec, train=train, seed=5, backend="torchcodec")(clip_rows)["video"]
        assert np.array_equal(out["video"].numpy(), expected)  # same frames, same crops, same flips


def test_video_rows_the_device_cannot_decode_fall_back_or_are_skipped(clip_rows, monkeypatch, caplog):
    from fovea.data import video
    from fovea.data.clips import ClipSpec, DecodeClips
    from fovea.data.device_decode import PlanClips, decode_clip_batch

    spec = ClipSpec(img_size=32, num_frames=4, frame_interval=2)
    planned = PlanClips(spec, train=False)(clip_rows)
    planned["video"][2] = b"damaged after preparation"
    real = video.decode_torchcodec

    def fails_on_row_0(data, indices, **kwargs):
        if data == clip_rows["video"][0]:
            raise video.BadVideo("frames do not decode", "NVDEC refused it")
        return real(data, indices, **kwargs)

    monkeypatch.setattr(video, "decode_torchcodec", fails_on_row_0)
    with caplog.at_level(logging.WARNING, logger="fovea.data.decode_failures"):
        out = decode_clip_batch(planned, num_frames=4, img_size=32, device=CPU)
    assert out["label"].tolist() == [0, 1]  # row 0 decoded by decord on the CPU, row 2 skipped and named
    assert np.array_equal(out["video"].numpy(), DecodeClips(spec, train=False)(clip_rows)["video"][:2])
    assert f"skipping video {clip_rows['path'][2]}: it does not decode (not a readable video (" in caplog.text
    with pytest.raises(ConfigError, match="data.video_decode=device decodes encoded videos"):
        PlanClips(spec, train=True, storage="decoded")
    assert build_config([{"data": {"video_decode": "device"}}]).data.video_decode == "device"
