"""Decode + augment on CPU: uint8 CHW out, EXIF orientation applied, undecodable rows skipped, eval deterministic."""

from __future__ import annotations

import io

import numpy as np
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
    # stored 40x20: left half red, right half blue; EXIF 6 = shown rotated 90 degrees clockwise, i.e. 20x40 with
    # red on top. Eval (short side -> 20, centre crop 20x20) must see red above blue, not red left of blue.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif, quality=95)
    batch = {"image": np.array([buffer.getvalue()], dtype=object), "label": np.array([0])}
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
