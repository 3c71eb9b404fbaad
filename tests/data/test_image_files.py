"""Image files as users have them (issue 21): only allowed formats decoded, bounded reads, what is stored (trailing
data, frames), large images, transparency and wide pixel formats, the same in every decode path. No Ray."""

from __future__ import annotations

import hashlib
import io
import os
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image, JpegImagePlugin

from fovea.config import ConfigError, build_config
from fovea.data.check import MAX_JPEG_SCANS, examine_image, first_image, read_and_check_images, read_image_file
from fovea.data.device_decode import PlanCrops, decode_batch
from fovea.data.eval_views import DecodeImageViews
from fovea.data.images import MAX_PIXELS, UnusableImage, format_problem, open_image
from fovea.data.transforms import DecodeImages

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _batch(images: list[bytes]) -> dict[str, np.ndarray]:
    column = np.empty(len(images), dtype=object)
    column[:] = images
    return {"image": column, "label": np.arange(len(images), dtype=np.int64)}


def _every_path(data: bytes, background=(255, 255, 255), size: int = 8) -> dict[str, np.ndarray]:
    """One square image decoded by every decode path, each as (3, size, size) uint8."""
    batch = _batch([data])
    whole = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0)
    torchvision = DecodeImages(size, train=True, background=background, **whole)
    torchvision.direct = False
    plan = PlanCrops(size, train=False, crop_pct=1.0, background=background)(batch)
    views = DecodeImageViews(size, crop_pct=1.0, num_crops=1, background=background)(batch)["image"]
    return {
        "train": DecodeImages(size, train=True, background=background, **whole)(batch)["image"][0],
        "train (torchvision)": torchvision(batch)["image"][0],
        "eval": DecodeImages(size, train=False, crop_pct=1.0, background=background)(batch)["image"][0],
        "eval views": views[0, 0],
        "device": decode_batch(plan, img_size=size, device=torch.device("cpu"))["image"][0].numpy(),
    }


def _assert_flat(outputs: dict[str, np.ndarray], colour, tolerance: int = 2) -> None:
    for path, image in outputs.items():
        assert image.shape[0] == 3, path
        difference = np.abs(image.astype(int) - np.asarray(colour)[:, None, None]).max()
        assert difference <= tolerance, f"{path}: {image[:, 0, 0].tolist()} is not {colour}"


# --------------------------------------------------------------------------------------------------------------------
# Formats: an allow-list, in preparation and in every decode path
# --------------------------------------------------------------------------------------------------------------------


def test_eps_is_refused_by_name_everywhere_without_pillow_parsing_it(monkeypatch, tmp_path: Path) -> None:
    calls = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: calls.append("open"))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append("gs"))
    reason = "unsupported image format EPS (fovea reads JPEG, PNG, WebP, GIF, BMP, TIFF)"
    assert examine_image(EPS).error == reason
    path = tmp_path / "photo.jpg"
    path.write_bytes(EPS)
    with pytest.raises(UnusableImage, match="format EPS"):
        read_image_file(str(path), max_file_mb=1)
    batch = _batch([EPS, _encode(_noise(16, 16), "JPEG")])
    assert DecodeImages(8, train=True)(batch)["label"].tolist() == [1]
    assert DecodeImages(8, train=False)(batch)["label"].tolist() == [1]
    assert DecodeImageViews(8, crop_pct=1.0, num_crops=2)(batch)["label"].tolist() == [1]
    assert PlanCrops(8, train=True)(batch)["label"].tolist() == [1]
    with pytest.raises(UnusableImage, match=reason.replace("(", r"\(").replace(")", r"\)")):
        open_image(EPS)
    assert calls == []


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "PCX", "SGI"])
def test_other_pillow_formats_are_refused_by_name(fmt: str) -> None:
    assert examine_image(_encode(_noise(16, 16), fmt)).error.startswith(f"unsupported image format {fmt} (")


def test_formats_outside_pillow_are_named_or_not_an_image() -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    assert format_problem(heic).startswith("unsupported image format HEIF/HEIC")
    assert format_problem(b"%PDF-1.7\n%....").startswith("unsupported image format PDF")
    assert format_problem(b"just some text here") == "not an image: cannot identify image file"
    assert format_problem(b"") == "empty file"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_are_kept_as_they_are(fmt: str) -> None:
    data = _encode(_noise(20, 12), fmt)
    checked = examine_image(data)
    assert checked == (data, 20, 12, "", "")
    assert open_image(data).size == (20, 12)


# --------------------------------------------------------------------------------------------------------------------
# Reading: size and header first, never the whole of a huge file
# --------------------------------------------------------------------------------------------------------------------


def _rows(paths: list[Path], **options):
    batch = {"path": [str(p) for p in paths], "label": [0] * len(paths), "class_name": ["a"] * len(paths)}
    batch["split"] = ["train"] * len(paths)
    return read_and_check_images(batch, **options).to_pydict()


def test_huge_and_odd_files_are_rejected_without_being_read(tmp_path: Path) -> None:
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as file:
        file.write(_encode(_noise(8, 8), "JPEG"))
        file.truncate(2 * 2**30)  # 2 GiB, sparse: no disk used
    zeros = tmp_path / "zeros.png"
    zeros.write_bytes(bytes(8 * 2**20))  # under the limit, but no image header
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # reading it would block forever
    good = tmp_path / "good.jpg"
    good.write_bytes(_encode(_noise(8, 8), "JPEG"))
    format_problem(bytes(16)), _rows([good])  # first calls load Pillow's plugins and pyarrow: not what is measured
    tracemalloc.start()
    start = time.perf_counter()
    try:
        rows = _rows([sparse, zeros, fifo, good, tmp_path])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MB allocated"
    assert rows["error"] == [
        "file too large: 2048.0 MB, over max_file_mb=64",
        "not an image: cannot identify image file",
        "not a regular file",
        "",
        "not a regular file",
    ]
    assert rows["content_hash"] == ["", "", "", hashlib.sha256(good.read_bytes()).hexdigest(), ""]
    size = good.stat().st_size
    assert _rows([good], max_file_mb=0.0001)["error"] == [f"file too large: {size} bytes, over max_file_mb=0.0001"]


# --------------------------------------------------------------------------------------------------------------------
# What is stored: the image, not what follows it
# --------------------------------------------------------------------------------------------------------------------

JUNK = np.random.default_rng(5).integers(0, 256, 3 * 2**20, dtype=np.uint8).tobytes()


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("JPEG", {"comment": b"\xff\xd8 a marker-like comment \xff\xd9"}),
        ("PNG", {}),
        ("WEBP", {}),
        ("BMP", {}),
    ],
)
def test_trailing_data_is_cut_after_the_image(fmt: str, options: dict) -> None:
    image = _encode(_noise(40, 30), fmt, **options)
    checked = examine_image(image + JUNK)
    assert checked.error == "" and checked.image == image
    assert checked.note == "dropped 3.0 MB after the end of the image"
    assert (checked.width, checked.height) == (40, 30)


def test_a_gif_keeps_its_first_frame_only() -> None:
    frames = [Image.new("P", (16, 16), index) for index in (1, 2, 3)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    checked = examine_image(gif)
    assert checked.error == "" and checked.note.endswith("after the first frame") and len(checked.image) < len(gif)
    with Image.open(io.BytesIO(checked.image)) as stored:
        assert getattr(stored, "n_frames", 1) == 1
        assert stored.convert("RGB").getpixel((3, 3)) == (255, 0, 0)


def test_trailing_data_no_structure_shows_is_reencoded_as_png() -> None:
    tiff = _encode(_noise(40, 30), "TIFF")
    assert first_image(tiff + JUNK, "TIFF") == (None, 0)
    checked = examine_image(tiff + JUNK)
    assert checked.note.startswith("re-encoded as PNG: the file holds 3.0 MB for 3600 bytes of 8-bit pixels")
    with Image.open(io.BytesIO(checked.image)) as stored:
        assert stored.format == "PNG"
        assert stored.tobytes() == Image.open(io.BytesIO(tiff)).tobytes()


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding() -> None:
    jpeg = _encode(_noise(16, 16), "JPEG")
    start = jpeg.index(b"\xff\xda")
    crafted = jpeg[:start] + jpeg[start:-2] * (MAX_JPEG_SCANS + 1) + b"\xff\xd9"
    reason = f"too many JPEG scans: {MAX_JPEG_SCANS + 1}, over {MAX_JPEG_SCANS} (too slow to decode)"
    assert examine_image(crafted).error == reason


# --------------------------------------------------------------------------------------------------------------------
# Large images
# --------------------------------------------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels, with hardly any pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    pixels = chunk(b"IDAT", zlib.compress(bytes(64)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def test_images_over_the_pixel_limit_are_refused_from_their_header(monkeypatch) -> None:
    side = int(MAX_PIXELS**0.5) + 1
    for limit in (Image.MAX_IMAGE_PIXELS, None):  # whatever Pillow's global setting is
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        start = time.perf_counter()
        assert examine_image(_png_header_only(side, side)).error.startswith("image too large: ")
        assert time.perf_counter() - start < 1
        with pytest.raises(UnusableImage, match="image too large"):
            open_image(_png_header_only(side, side))


def test_large_jpegs_are_decoded_at_a_reduced_scale_and_shrunk(monkeypatch) -> None:
    sizes = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = draft(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    checked = examine_image(_encode(_noise(1200, 800), "JPEG"), max_side=100)
    assert sizes == [(150, 100)]  # decoded at 1/8, never below the target
    assert (checked.width, checked.height) == (100, 67) and checked.error == ""
    with Image.open(io.BytesIO(checked.image)) as stored:
        assert stored.format == "JPEG" and stored.size == (100, 67)


def test_shrunk_transparent_images_keep_their_alpha_for_the_decoders() -> None:
    rgba = Image.new("RGBA", (300, 100), (255, 0, 0, 0))
    checked = examine_image(_encode(rgba, "PNG"), max_side=30)
    with Image.open(io.BytesIO(checked.image)) as stored:
        assert stored.format == "PNG" and stored.mode == "RGBA" and stored.size == (30, 10)
    assert open_image(checked.image, background=(0, 0, 255)).getpixel((5, 5)) == (0, 0, 255)


# --------------------------------------------------------------------------------------------------------------------
# Transparency and pixel formats: one decoding rule in every path
# --------------------------------------------------------------------------------------------------------------------


def _transparent_images() -> dict[str, bytes]:
    """Square images, fully transparent, with red under the transparent pixels."""
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([255, 0, 0] * 256)
    grey = Image.new("L", (16, 16), 200)
    return {
        "RGBA PNG": _encode(Image.new("RGBA", (16, 16), (255, 0, 0, 0)), "PNG"),
        "LA PNG": _encode(Image.new("LA", (16, 16), (90, 0)), "PNG"),
        "P PNG, tRNS bytes": _encode(palette, "PNG", transparency=bytes([0])),
        "P GIF": _encode(palette, "GIF", transparency=0),
        "RGB PNG, tRNS colour": _encode(Image.new("RGB", (16, 16), (255, 0, 0)), "PNG", transparency=(255, 0, 0)),
        "L PNG, tRNS grey": _encode(grey, "PNG", transparency=200),
        "RGBA WebP": _encode(Image.new("RGBA", (16, 16), (255, 0, 0, 0)), "WEBP", lossless=True),
    }


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (10, 120, 250)])
def test_transparent_pixels_become_the_background_in_every_path(background) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("error", module=r"PIL\.")  # no per-file palette warning either
        for name, data in _transparent_images().items():
            assert examine_image(data).error == "", name
            _assert_flat(_every_path(data, background), background)


def test_half_transparent_pixels_are_blended_the_same_way_in_every_path() -> None:
    data = _encode(Image.new("RGBA", (16, 16), (255, 0, 0, 128)), "PNG")
    expected = (255, 127, 127)  # red at alpha 128 over white
    _assert_flat(_every_path(data), expected, tolerance=3)
    assert np.asarray(open_image(data)).reshape(-1, 3).tolist()[0] == [255, 127, 127]


def test_sixteen_bit_and_float_pixels_are_scaled_not_clipped() -> None:
    ramp = np.arange(0, 65536, 256, dtype=np.uint16).reshape(16, 16)
    png16 = _encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(png16)).mode == "I;16"
    assert examine_image(png16).error == ""
    assert np.array_equal(np.asarray(open_image(png16))[..., 0], (ramp >> 8).astype(np.uint8))
    _assert_flat(_every_path(_encode(Image.fromarray(np.full((16, 16), 0x8000, np.uint16)), "PNG")), (128,) * 3)

    wide = _encode(Image.fromarray(np.full((16, 16), 40000, np.int32)), "TIFF")
    _assert_flat(_every_path(wide), (40000 >> 8,) * 3)
    floats = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    tiff = _encode(Image.fromarray(floats), "TIFF")
    assert examine_image(tiff).error == ""
    assert np.array_equal(np.asarray(open_image(tiff))[..., 1], np.round(floats * 255).astype(np.uint8))
    _assert_flat(_every_path(_encode(Image.fromarray(np.full((16, 16), 0.5, np.float32)), "TIFF")), (128,) * 3)


def test_pixels_without_a_known_scale_are_refused_with_a_reason() -> None:
    hundreds = _encode(Image.fromarray(np.full((8, 8), 300.0, np.float32)), "TIFF")
    assert examine_image(hundreds).error == (
        "pixels without a known scale to 8 bits: 32-bit floats from 300 to 300 (only [0, 1] is scaled)"
    )
    nan = _encode(Image.fromarray(np.full((8, 8), np.nan, np.float32)), "TIFF")
    assert examine_image(nan).error.endswith("32-bit floats from nan to nan (only [0, 1] is scaled)")
    negative = _encode(Image.fromarray(np.full((8, 8), -5, np.int32)), "TIFF")
    assert examine_image(negative).error.endswith(": I integers from -5 to -5 (only 0..65535 is scaled)")
    lab = _encode(Image.new("LAB", (8, 8), (50, 10, 10)), "TIFF")  # Pillow's plain conversion would copy channels
    assert examine_image(lab).error == "unsupported pixel format LAB"
    assert DecodeImages(8, train=False)(_batch([hundreds, lab]))["label"].tolist() == []


@pytest.mark.parametrize(
    ("mode", "value", "fmt", "rgb"),
    [
        ("CMYK", (0, 255, 0, 0), "TIFF", (255, 0, 255)),
        ("YCbCr", (100, 128, 128), "TIFF", (100, 100, 100)),
        ("1", 1, "PNG", (255, 255, 255)),
        ("I;16B", 0x8000, "TIFF", (128, 128, 128)),
        ("L", 77, "GIF", (77, 77, 77)),
    ],
)
def test_other_pixel_formats_become_rgb(mode: str, value, fmt: str, rgb: tuple) -> None:
    data = _encode(Image.new(mode, (8, 8), value), fmt)
    assert examine_image(data).error == ""
    _assert_flat(_every_path(data), rgb)


def test_alpha_background_config() -> None:
    assert build_config([]).data.alpha_rgb == (255, 255, 255)
    for text, rgb in [("black", (0, 0, 0)), ("#0A1b2C", (10, 27, 44)), (" 1, 2,3 ", (1, 2, 3)), ("grey", (128,) * 3)]:
        assert build_config([{"data": {"alpha_background": text}}]).data.alpha_rgb == rgb
    for bad in ["purple", "#12345", "1,2", "1,2,256", "-1,0,0"]:
        with pytest.raises(ConfigError, match="alpha_background") as caught:
            build_config([{"data": {"alpha_background": bad}}])
        assert "\n" not in str(caught.value)
