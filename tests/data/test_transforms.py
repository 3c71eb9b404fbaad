"""Decode + augment on CPU: uint8 CHW out, EXIF orientation applied, undecodable rows skipped, eval deterministic."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from fovea.data.transforms import DecodeImages, eval_resize_size


def _jpeg(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (width, height), (0, 90, 200, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def _rotated_jpeg() -> bytes:
    """Stored 40x20, left half red, right half blue, with EXIF orientation 6: shown turned 90 degrees clockwise,
    20 wide and 40 tall with red on top."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def test_train_and_eval_emit_uint8_chw_of_the_model_size():
    batch = {
        "image": np.array([_jpeg(50, 80), _png(300, 120), _jpeg(16, 16)], dtype=object),
        "label": np.array([0, 1, 2]),
    }
    for train in (True, False):
        out = DecodeImages(24, train=train, randaugment_ops=2 if train else 0)(batch)
        assert out["image"].dtype == np.uint8 and out["image"].shape == (3, 3, 24, 24)
        assert out["label"].tolist() == [0, 1, 2] and out["label"].dtype == np.int64


def test_eval_is_deterministic_and_centre_cropped():
    batch = {"image": np.array([_jpeg(64, 48)], dtype=object), "label": np.array([0])}
    decode = DecodeImages(32, train=False, crop_pct=0.875)
    np.testing.assert_array_equal(decode(batch)["image"], decode(batch)["image"])
    assert eval_resize_size(224, 0.875) == 256


def test_exif_orientation_is_applied():
    # Eval (short side -> 20, centre crop 20x20) must see red above blue, not red left of blue.
    batch = {"image": np.array([_rotated_jpeg()], dtype=object), "label": np.array([0])}
    image = DecodeImages(20, train=False, crop_pct=1.0)(batch)["image"][0].astype(int)  # (3, 20, 20)
    top, bottom = image[:, 2, 10], image[:, 17, 10]
    assert top[0] > 200 and top[2] < 60, top  # red
    assert bottom[2] > 200 and bottom[0] < 60, bottom  # blue


def test_undecodable_rows_are_skipped_not_fatal():
    batch = {"image": np.array([b"not an image", _jpeg(30, 30), b""], dtype=object), "label": np.array([5, 6, 7])}
    out = DecodeImages(16, train=True)(batch)
    assert out["label"].tolist() == [6] and out["image"].shape == (1, 3, 16, 16)
    empty = DecodeImages(16, train=False)({"image": np.array([b"x"], dtype=object), "label": np.array([1])})
    assert empty["image"].shape == (0, 3, 16, 16) and empty["label"].shape == (0,)


def _noisy_jpeg(side: int, seed: int = 0) -> bytes:
    """A square JPEG with gradients and noise (a flat colour would hide crop and resize differences)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    pixels = np.stack([xx * 255 // side, yy * 255 // side, (xx + yy) * 127 // side], -1)
    pixels = np.clip(pixels + rng.integers(0, 30, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _torchvision_path(size: int, **augment) -> DecodeImages:
    decode = DecodeImages(size, train=True, **augment)
    decode.direct = False  # the reference: torchvision's RandomResizedCrop / flip pipeline
    return decode


def test_direct_training_path_matches_torchvision_pixel_for_pixel():
    # the whole image as the box (scale 1, aspect 1) and no flip: the only randomness removed
    batch = {"image": np.array([_noisy_jpeg(60)], dtype=object), "label": np.array([3])}
    fixed = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    direct = DecodeImages(40, train=True, hflip=0.0, **fixed)
    assert direct.direct
    np.testing.assert_array_equal(direct(batch)["image"], _torchvision_path(40, hflip=0.0, **fixed)(batch)["image"])
    # hflip=1: always mirrored
    mirrored = DecodeImages(40, train=True, hflip=1.0, **fixed)(batch)["image"]
    np.testing.assert_array_equal(mirrored, direct(batch)["image"][..., ::-1])
    # RandAugment needs torchvision's pipeline
    assert not DecodeImages(40, train=True, randaugment_ops=2).direct and not DecodeImages(40, train=False).direct


def test_large_boxes_decode_at_a_reduced_jpeg_scale(monkeypatch):
    from PIL import JpegImagePlugin

    scales = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        before = self.size
        result = draft(self, mode, size)
        scales.append(before[0] // self.size[0])
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    batch = {"image": np.array([_noisy_jpeg(512)], dtype=object), "label": np.array([0])}
    fixed = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0)
    fast = DecodeImages(64, train=True, **fixed)(batch)["image"].astype(int)
    assert scales == [8]  # 512 px box, 64 px out: decoded at 1/8 (64 px), never smaller than the output
    full = _torchvision_path(64, **fixed)(batch)["image"].astype(int)
    assert np.abs(fast - full).mean() < 6  # the same view; libjpeg's DCT scaling filters a little differently
    scales.clear()
    DecodeImages(300, train=True, **fixed)(batch)  # 512 px box for 300 px out: under 2x, decoded in full
    assert scales == []


def test_direct_path_applies_exif_orientation_and_converts_modes():
    batch = {"image": np.array([_rotated_jpeg(), _png(30, 30)], dtype=object), "label": np.array([0, 1])}
    # the whole upright image (aspect 0.5) squeezed to 20x20: red on top, blue below
    out = DecodeImages(20, train=True, crop_scale=(1.0, 1.0), crop_ratio=(0.5, 0.5), hflip=0.0)(batch)["image"]
    image = out[0].astype(int)
    assert image[0, 2, 10] > 200 and image[2, 2, 10] < 60 and image[2, 17, 10] > 200 and image[0, 17, 10] < 60
    assert out.shape == (2, 3, 20, 20) and out.dtype == np.uint8  # the RGBA PNG, converted


def test_each_process_draws_its_own_crops():
    import pickle

    decode = DecodeImages(32, train=True)
    batch = {"image": np.array([_noisy_jpeg(96)] * 8, dtype=object), "label": np.arange(8)}
    first = decode(batch)["image"]
    assert len({view.tobytes() for view in first}) == 8  # a new box (and maybe flip) per row
    copies = [pickle.loads(pickle.dumps(decode)) for _ in range(2)]  # as Ray tasks get it
    assert not np.array_equal(copies[0](batch)["image"], copies[1](batch)["image"])
    # forked DataLoader workers copy the parent's generator, already used above: each must draw its own
    loader = torch.utils.data.DataLoader(_OneRow(decode, batch), batch_size=None, num_workers=2)
    views = [view.numpy().tobytes() for view in loader]
    assert len(set(views)) == 2, "two worker processes decoded the same crop"


class _OneRow(torch.utils.data.Dataset):
    """Two items, each the first row decoded; with two workers, each worker decodes one."""

    def __init__(self, decode: DecodeImages, batch: dict) -> None:
        self.decode, self.batch = decode, batch

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        return torch.from_numpy(self.decode({k: v[:1] for k, v in self.batch.items()})["image"][0])
