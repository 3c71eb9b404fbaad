"""Opening encoded images safely and turning them into RGB: the one decoding rule of preparation, training,
evaluation and prediction.

- Only an allow-list of formats is ever decoded (:data:`ALLOWED_FORMATS`: JPEG, PNG, WebP, GIF and TIFF (first
  frame or page), BMP). Pillow would otherwise identify dozens more by their first bytes, whatever the file's name,
  among them PostScript/EPS, which it renders by running Ghostscript. A file in another format is refused with a
  reason naming the format (:func:`format_problem`), before Pillow parses anything but its first 16 bytes.
- Images over :data:`MAX_PIXELS` (Pillow's own decompression-bomb limit, applied here whatever Pillow's global
  setting is) are refused from their header, before any pixel is decoded.
- Pixels become 8 bits per channel (:func:`eight_bit`): palettes are expanded (to RGBA when they carry
  transparency), 16-bit integer pixels (``I;16``, and ``I`` with values in 0..65535) are cut to their high byte
  (``value >> 8``), 32-bit float pixels (``F``) in [0, 1] are scaled by 255; other integer or float ranges have no
  known scale and are refused, as are pixel formats other than these, RGB(A), L(A), 1, CMYK, YCbCr and RGBX (a LAB
  TIFF, say).
- Transparency is composited onto one fixed background colour (:func:`to_rgb`; ``data.alpha_background``, white by
  default), so what lies under transparent pixels, often left over from editing and different between classes,
  never reaches a model.
- EXIF orientation is applied (:func:`upright`).

:func:`open_image` does all of it; the training hot path (``fovea.data.transforms.DecodeImages``) uses the parts, so
that a plain RGB JPEG still takes libjpeg's reduced-scale decode and no copy.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import (
    BmpImagePlugin,  # noqa: F401 - registers the format
    GifImagePlugin,  # noqa: F401
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    WebPImagePlugin,  # noqa: F401
)

from fovea.errors import joined_lines

# Pillow's names of the formats fovea decodes; a JPEG may come back as "MPO" (a JPEG with more images appended).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF"
# Pillow's decompression-bomb error limit (2 x Image.MAX_IMAGE_PIXELS by default): about 716 MB of RGBA at most.
MAX_PIXELS = 2 * 89_478_485
WHITE = (255, 255, 255)
EXIF_ORIENTATION = 0x0112
# First bytes of formats Pillow does not read at all, to name them in the reason (ISO-BMFF brands of HEIF, PDF).
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


_NO_SCALE = "pixels without a known scale to 8 bits"


class UnusableImage(ValueError):
    """A file fovea will not decode; the message is the one-line reason preparation records."""


def is_jpeg(image: Image.Image) -> bool:
    """Whether ``image`` is decoded by libjpeg (JPEG, or MPO: a JPEG with more images after it)."""
    return isinstance(image, JpegImagePlugin.JpegImageFile)


def _accepts(format_name: str, prefix: bytes) -> bool:
    """Whether Pillow's first-bytes test of ``format_name`` accepts ``prefix`` (never opens anything)."""
    entry = Image.OPEN.get(format_name)
    if entry is None or entry[1] is None:
        return False
    try:
        result = entry[1](prefix)
    except Exception:  # noqa: BLE001 - a plugin's test that fails on odd bytes does not accept them
        return False
    return bool(result) and not isinstance(result, str)  # a string is Pillow's "support not installed"


def format_problem(prefix: bytes) -> str:
    """Why a file starting with ``prefix`` (its first 16 bytes or more) will not be decoded; ``""`` when it looks
    like one of :data:`ALLOWED_FORMATS`.

    Only Pillow's first-bytes tests run here; no plugin parses the file.
    """
    if not prefix:
        return "empty file"
    prefix = bytes(prefix[:16])
    if any(_accepts(name, prefix) for name in ALLOWED_FORMATS):
        return ""
    Image.init()  # every plugin, to name what the file is
    named = next((name for name in Image.ID if name not in ALLOWED_FORMATS and _accepts(name, prefix)), None)
    if named is None and prefix[4:8] == b"ftyp" and prefix[8:12] in _HEIF_BRANDS:
        named = "HEIF/HEIC"
    if named is None and prefix.startswith(b"%PDF-"):
        named = "PDF"
    if named is None:
        return "not an image: cannot identify image file"
    return f"unsupported image format {named} (fovea reads {FORMAT_NAMES})"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Pillow's per-file warnings (palette transparency, large images, odd EXIF): fovea decides per file
    itself, and a warning per file from thousands of decode tasks would drown the job log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def open_allowed(data: bytes) -> Image.Image:
    """Open encoded bytes as a lazy Pillow image, in one of :data:`ALLOWED_FORMATS` and at most :data:`MAX_PIXELS`.

    Only the header is parsed; the caller decodes (``load``, ``resize``...) and closes it (``with``). Call it inside
    :func:`quiet`.

    Raises:
        UnusableImage: with the reason (another format, no image, too large, a header that does not parse).
    """
    problem = format_problem(data[:16])
    if problem:
        raise UnusableImage(problem)
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise UnusableImage(f"image too large: {joined_lines(error)}") from None
    except Exception as error:  # header parsing fails in many ways on damaged files
        raise UnusableImage(f"truncated or corrupt image: {joined_lines(error)}") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise UnusableImage(
            f"image too large: {width}x{height} pixels ({width * height / 1e6:.1f} Mpx), over the "
            f"{MAX_PIXELS / 1e6:.1f} Mpx fovea decodes"
        )
    return image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 to 8) of an opened image; 1 when it has none, or EXIF that does not parse."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - damaged EXIF: the pixels are shown as stored, in every path alike
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says (decoding it), or ``image`` itself when it needs no turn."""
    return image if exif_orientation(image) == 1 else ImageOps.exif_transpose(image)


def _grey_from_wide(image: Image.Image) -> Image.Image:
    """8-bit ``L`` (or ``LA`` for a transparent grey value) from 16/32-bit integer or 32-bit float pixels."""
    values = np.asarray(image)
    if values.size == 0:
        raise UnusableImage("image has no pixels")
    if image.mode == "F":
        low, high = float(np.min(values)), float(np.max(values))
        if not (np.isfinite(low) and np.isfinite(high) and 0.0 <= low and high <= 1.0):
            raise UnusableImage(f"{_NO_SCALE}: 32-bit floats from {low:g} to {high:g} (only [0, 1] is scaled)")
        grey = np.round(values * 255.0).astype(np.uint8)
    else:
        low, high = int(np.min(values)), int(np.max(values))
        if low < 0 or high > 65535:
            raise UnusableImage(f"{_NO_SCALE}: {image.mode} integers from {low} to {high} (only 0..65535 is scaled)")
        grey = (values.astype(np.uint32) >> 8).astype(np.uint8)
    out = Image.fromarray(grey)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int) and not isinstance(transparent, bool):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        out = Image.merge("LA", (out, Image.fromarray(alpha)))
    return out


def eight_bit(image: Image.Image) -> Image.Image:
    """``image`` in ``L``, ``RGB``, ``LA`` or ``RGBA`` (8 bits per channel; alpha only where it has transparency).

    Raises:
        UnusableImage: pixels without a known scale to 8 bits, or a pixel format Pillow cannot convert.
    """
    mode, transparent = image.mode, "transparency" in image.info
    if mode in ("RGB", "L"):
        return image.convert("RGBA" if mode == "RGB" else "LA") if transparent else image
    if mode in ("RGBA", "LA"):
        return image
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or transparent else "RGB")
    if mode == "1":
        return image.convert("LA" if transparent else "L")
    if mode in ("La", "RGBa"):  # premultiplied alpha
        return image.convert(mode.upper())
    if mode == "F" or mode == "I" or mode.startswith("I;16"):
        return _grey_from_wide(image)
    if mode in ("CMYK", "YCbCr", "RGBX"):
        return image.convert("RGB")
    # LAB (TIFF): Pillow's plain conversion copies the channels as if they were RGB; others it cannot convert
    raise UnusableImage(f"unsupported pixel format {mode}")


def composite(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """An ``L``/``RGB``/``LA``/``RGBA`` image as RGB, transparent pixels blended onto ``background``."""
    if image.mode == "RGB":
        return image
    if image.mode == "L":
        return image.convert("RGB")
    base = Image.new("RGB", image.size, tuple(background))
    base.paste(image.convert("RGB"), mask=image.getchannel("A"))
    return base


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any opened image's pixels as 8-bit RGB: :func:`eight_bit`, then :func:`composite` onto ``background``. A
    plain RGB image comes back as it is (not even decoded yet)."""
    return composite(eight_bit(image), background)


def open_image(data: bytes, *, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Encoded bytes as a decoded, upright RGB image: :func:`open_allowed`, :func:`upright`, :func:`to_rgb`.

    Raises:
        UnusableImage: the file is refused (another format, too large, unusable pixels).
        Exception: whatever Pillow raises on a damaged file.
    """
    with quiet(), open_allowed(data) as image:
        rgb = to_rgb(upright(image), background)
        rgb.load()
    return rgb
