"""Per-file validation of images: a bounded read, a full decode, shrinking, and the rows preparation keeps.

:func:`read_and_check_images` is the ``map_batches`` function of image preparation; it, :func:`read_image_file` and
:func:`examine_image` are plain functions, testable without Ray. :func:`kept_rows_of_split` picks a split's good rows
out of checked rows (images or videos) for writing.

What is stored for a good file (and never more than what decodes, see :mod:`fovea.data.images` for the formats and
pixel rules that decide what decodes):

- the file's own bytes, cut after the end of its (first) image: after the EOI marker of a JPEG's image, the IEND
  chunk of a PNG, the RIFF chunk of a WebP or the size a BMP's header gives, and for a GIF after its first frame
  (the frame fovea decodes) with the trailer put back; kept cut only when it decodes to the very same pixels;
- re-encoded as PNG (8-bit, upright, alpha kept) when what is left is still over twice the size of the decoded
  8-bit pixels plus 1 MB: trailing data no structure walk finds (TIFF), frames or pages after the first, or pixels
  wider than 8 bits;
- shrunk and re-encoded when its long side is over ``max_side``: as JPEG, or as PNG when it has transparency (the
  decoders composite it onto the run's background, so preparation does not choose one).

Cut or re-encoded files are listed in the manifest's ``notes``; the ``content_hash`` of each good row is the SHA-256
of the file's bytes as read, before any of this.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageFile

from fovea.data.files import FileRefused, amount, read_limited
from fovea.data.images import UnusableImage, eight_bit, format_problem, is_jpeg, open_allowed, quiet, upright
from fovea.errors import joined_lines

# The defaults of pipelines/prepare_images.py (and prepare_images): about 4x the side of the usual training crops
# (224 to 512 px), and a size no ordinary photo reaches.
DEFAULT_MAX_SIDE = 2048
DEFAULT_MAX_FILE_MB = 64.0
# A progressive JPEG decodes in one pass over the whole image per scan: encoders write about 10; thousands take
# minutes to decode and are refused.
MAX_JPEG_SCANS = 256
# How much larger than its decoded 8-bit pixels a stored file may be before it is re-encoded as PNG.
_EXTRA_BYTES = 1 << 20

# What read_and_check_images returns: one row per input file, rejected files included (``error`` set, no image).
CHECKED_SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("label", pa.int64()),
        ("class_name", pa.string()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("split", pa.string()),
        ("error", pa.string()),
        ("note", pa.string()),
        ("content_hash", pa.string()),
    ]
)


class ImageCheck(NamedTuple):
    """What :func:`examine_image` found: the bytes to store and the stored image's size, or the reason it is
    rejected (``error``); ``note`` says what was cut or re-encoded, for the manifest."""

    image: bytes
    width: int
    height: int
    error: str = ""
    note: str = ""


def read_image_file(path: str, *, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> bytes:
    """A file's bytes, read only when it is a regular file of at most ``max_file_mb`` MiB whose first bytes are one
    of the allowed image formats (:func:`~fovea.data.images.format_problem`; :func:`fovea.data.files.read_limited`).

    Raises:
        UnusableImage: not a regular file (a FIFO would block the read forever), too large, or not an allowed image
            format; the file is never read whole then.
        OSError: it cannot be read.
    """
    try:
        return read_limited(path, max_mb=max_file_mb, head_check=format_problem)
    except FileRefused as refused:
        raise UnusableImage(str(refused)) from None


# --------------------------------------------------------------------------------------------------------------------
# Where the first image of a file ends
# --------------------------------------------------------------------------------------------------------------------

# In a JPEG's entropy-coded data, a marker is 0xFF followed by anything but 0x00 (a stuffed byte), a restart
# marker (0xD0-0xD7) or another 0xFF (fill).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg_end(data: bytes) -> tuple[int | None, int]:
    """``(offset after the first image's EOI marker, scans before it)``; the offset is None when the marker
    structure cannot be followed."""
    pos, scans, size = 2, 0, len(data)
    while pos < size and data[pos] == 0xFF:
        while pos < size and data[pos] == 0xFF:
            pos += 1
        if pos >= size:
            break
        marker, pos = data[pos], pos + 1
        if marker == 0xD9:  # EOI
            return pos, scans
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            continue
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            break
        pos += length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next marker
            scans += 1
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return None, scans


def _png_end(data: bytes) -> int | None:
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            return pos if pos <= len(data) else None
    return None


def _gif_sub_blocks_end(data: bytes, pos: int) -> int | None:
    while pos < len(data):
        length = data[pos]
        pos += 1 + length
        if length == 0:
            return pos
    return None


def _gif_first_frame(data: bytes) -> bytes | None:
    """A GIF's header, blocks and first image, with the trailer: a valid GIF of the frame fovea decodes."""
    if len(data) < 13:
        return None
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while pos < len(data):
        block = data[pos]
        if block == 0x21:  # extension: label, then sub-blocks
            end = _gif_sub_blocks_end(data, pos + 2)
        elif block == 0x2C and pos + 10 <= len(data):  # image: descriptor, local palette, LZW size, sub-blocks
            flags = data[pos + 9]
            start = pos + 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            end = _gif_sub_blocks_end(data, start + 1)
            return None if end is None else data[:end] + b"\x3b"
        else:
            return None
        if end is None:
            return None
        pos = end
    return None


def first_image(data: bytes, image_format: str) -> tuple[bytes | None, int]:
    """``(the bytes of the first image alone, JPEG scans)``: None where its end cannot be found (TIFF, damaged
    structure); scans are counted for JPEGs only (0 otherwise)."""
    end: int | None = None
    if image_format in ("JPEG", "MPO"):
        end, scans = _jpeg_end(data)
        return (None if end is None else data[:end]), scans
    if image_format == "PNG":
        end = _png_end(data)
    elif image_format == "WEBP" and len(data) >= 12:
        size = int.from_bytes(data[4:8], "little")
        end = 8 + size + (size & 1)
    elif image_format == "BMP" and len(data) >= 6:
        end = int.from_bytes(data[2:6], "little") or None
    elif image_format == "GIF":
        return _gif_first_frame(data), 0
    return (data[:end] if end is not None and 26 <= end <= len(data) else None), 0


# --------------------------------------------------------------------------------------------------------------------
# Checking one file
# --------------------------------------------------------------------------------------------------------------------


def _encode(image: Image.Image, *, jpeg_quality: int | None) -> bytes:
    """PNG (``jpeg_quality`` None, or an image with alpha) or JPEG bytes of an L/RGB/LA/RGBA image."""
    buffer = io.BytesIO()
    if jpeg_quality is not None and image.mode in ("L", "RGB"):
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _shrink(pixels: Image.Image, max_side: int, jpeg_quality: int) -> ImageCheck:
    """Resize so the long side is ``max_side``; JPEG, or PNG to keep real transparency."""
    if pixels.mode in ("LA", "RGBA") and pixels.getchannel("A").getextrema() == (255, 255):
        pixels = pixels.convert(pixels.mode[:-1])  # opaque everywhere: no transparency to keep
    width, height = pixels.size
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = pixels.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return ImageCheck(_encode(resized, jpeg_quality=jpeg_quality), size[0], size[1])


def _same_pixels(data: bytes, pixels: Image.Image) -> bool:
    """Whether ``data`` decodes to ``pixels`` (upright, 8-bit, before compositing), as the decoders will see it."""
    try:
        with open_allowed(data) as image:
            image.load()
            again = eight_bit(upright(image))
    except Exception:  # noqa: BLE001 - a cut that does not decode is not used
        return False
    return again.mode == pixels.mode and again.size == pixels.size and again.tobytes() == pixels.tobytes()


def _stored(
    data: bytes, image_format: str, first: bytes | None, pixels: Image.Image, size: tuple[int, int]
) -> ImageCheck:
    """The :class:`ImageCheck` of a file kept at its size: its bytes, cut after its first image when that decodes to
    the same pixels, or re-encoded as PNG when they are still far larger than the pixels."""
    note = ""
    if first is not None and len(first) < len(data) and _same_pixels(first, pixels):
        where = "the first frame" if image_format == "GIF" else "the end of the image"
        note = f"dropped {amount(len(data) - len(first))} after {where}"
        data = first
    needed = pixels.width * pixels.height * len(pixels.getbands())
    if len(data) > 2 * needed + _EXTRA_BYTES:
        note = f"re-encoded as PNG: the file holds {amount(len(data))} for {amount(needed)} of 8-bit pixels"
        return ImageCheck(_encode(pixels, jpeg_quality=None), pixels.width, pixels.height, "", note)
    return ImageCheck(data, *size, "", note)


def _examine(data: bytes, max_side: int | None, jpeg_quality: int) -> ImageCheck:
    with open_allowed(data) as image:
        image_format, size = str(image.format), image.size
        first, scans = first_image(data, image_format)
        if scans > MAX_JPEG_SCANS:
            return ImageCheck(b"", 0, 0, f"too many JPEG scans: {scans}, over {MAX_JPEG_SCANS} (too slow to decode)")
        shrink = bool(max_side) and max(size) > max_side
        if shrink and is_jpeg(image):
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the target: less to decode, bounded memory
            scale = max_side / max(size)
            image.draft(None, (max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))))
        try:
            image.load()
        except Exception as error:  # any decoder failure means a damaged file
            return ImageCheck(b"", 0, 0, f"truncated or corrupt image: {joined_lines(error)}")
        pixels = eight_bit(upright(image))  # refuses pixels the decoders could not use
    if shrink:
        return _shrink(pixels, max_side, jpeg_quality)
    return _stored(data, image_format, first, pixels, size)


def examine_image(data: bytes, *, max_side: int | None = None, jpeg_quality: int = 90) -> ImageCheck:
    """Fully decode one encoded image, as the decoders will, and choose the bytes to store.

    Args:
        data: The file's bytes.
        max_side: When set (not 0) and the image's long side exceeds it, the image is shrunk so its long side is
            ``max_side`` (JPEGs decoded at a reduced scale first) and re-encoded, EXIF orientation applied.
        jpeg_quality: JPEG quality of shrunk images.

    Returns:
        The bytes to store (see the module's description) and the stored image's size; or no bytes and the reason
        the file is not a usable image.
    """
    if not data:
        return ImageCheck(b"", 0, 0, "empty file")
    # Decode strictly even when other code in this worker process relaxed PIL's global truncation switch: a
    # truncated file must be rejected here, not silently padded with gray.
    load_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with quiet():
            return _examine(data, max_side, jpeg_quality)
    except UnusableImage as error:
        return ImageCheck(b"", 0, 0, str(error))
    except Exception as error:  # converting or re-encoding an image PIL decodes can still fail
        return ImageCheck(b"", 0, 0, f"truncated or corrupt image: {joined_lines(error)}")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated


def check_image(data: bytes, *, max_side: int | None = None, jpeg_quality: int = 90) -> tuple[bytes, int, int, str]:
    """:func:`examine_image` without the note: ``(image_bytes, width, height, error)``."""
    return tuple(examine_image(data, max_side=max_side, jpeg_quality=jpeg_quality))[:4]  # type: ignore[return-value]


def read_and_check_images(
    batch: pa.Table | Mapping[str, Sequence[Any]],
    *,
    max_side: int | None = None,
    jpeg_quality: int = 90,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
) -> pa.Table:
    """Read and check a batch of files; the ``map_batches`` function of :func:`~fovea.data.prepare.prepare_images`.

    Never raises on bad files: each input row yields one output row, with ``error`` naming what is wrong with it.

    Args:
        batch: Columns ``path``, ``label``, ``class_name`` and ``split`` (a pyarrow table or a dict of sequences).
        max_side: See :func:`examine_image`.
        jpeg_quality: See :func:`examine_image`.
        max_file_mb: Files larger than this (MiB) are rejected without being read (:func:`read_image_file`).

    Returns:
        A table with :data:`CHECKED_SCHEMA`: ``image`` (encoded bytes), ``label``, ``class_name``, ``path``,
        ``width``, ``height`` (of the stored image), ``split``, ``error`` (``""`` for good rows), ``note`` (what was
        cut or re-encoded) and ``content_hash`` (hex SHA-256 of the bytes read; ``""`` for rejected rows).
    """

    def column(name: str) -> list[Any]:
        return batch.column(name).to_pylist() if isinstance(batch, pa.Table) else list(batch[name])

    paths = column("path")
    results, hashes = [], []
    for path in paths:
        digest = ""
        try:
            data = read_image_file(path, max_file_mb=max_file_mb)
        except UnusableImage as error:
            result = ImageCheck(b"", 0, 0, str(error))
        except OSError as error:
            result = ImageCheck(b"", 0, 0, f"unreadable file: {error.strerror or joined_lines(error)}")
        else:
            result = examine_image(data, max_side=max_side, jpeg_quality=jpeg_quality)
            digest = "" if result.error else hashlib.sha256(data).hexdigest()
        results.append(result)
        hashes.append(digest)
    return pa.table(
        {
            "image": [result.image for result in results],
            "label": [int(label) for label in column("label")],
            "class_name": [str(name) for name in column("class_name")],
            "path": [str(path) for path in paths],
            "width": [result.width for result in results],
            "height": [result.height for result in results],
            "split": [str(split) for split in column("split")],
            "error": [result.error for result in results],
            "note": [result.note for result in results],
            "content_hash": hashes,
        },
        schema=CHECKED_SCHEMA,
    )


def kept_rows_of_split(batch: pa.Table, *, split: str) -> pa.Table:
    """The good rows of one split, without the bookkeeping columns."""
    keep = pc.and_(pc.equal(batch["split"], split), pc.equal(batch["error"], ""))
    return batch.filter(keep).drop_columns([name for name in ("split", "error", "note") if name in batch.column_names])
