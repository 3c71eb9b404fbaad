"""Per-file validation of images: full decode, optional shrinking, and the rows preparation keeps.

:func:`read_and_check_images` is the ``map_batches`` function of image preparation; it and :func:`check_image`
are plain functions, testable without Ray. :func:`kept_rows_of_split` picks a split's good rows out of checked rows
(images or videos) for writing.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fovea.errors import joined_lines

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
    ]
)


def check_image(data: bytes, *, max_side: int | None = None, jpeg_quality: int = 90) -> tuple[bytes, int, int, str]:
    """Fully decode one encoded image and shrink it when it is larger than ``max_side``.

    Args:
        data: The file's bytes.
        max_side: When set and the image's long side exceeds it, the image is resized so the long side is
            ``max_side`` and re-encoded as RGB (or grayscale) JPEG, with its EXIF orientation applied.
        jpeg_quality: JPEG quality of re-encoded images.

    Returns:
        ``(image_bytes, width, height, error)``: the bytes to store (the original ones unless shrunk) and the size
        of the stored image, and ``error == ""``; or ``(b"", 0, 0, reason)`` for a file that is not a usable image.
    """
    if not data:
        return b"", 0, 0, "empty file"
    # Decode strictly even when other code in this worker process relaxed PIL's global truncation switch: a
    # truncated file must be rejected here, not silently padded with gray.
    load_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # PIL warns about odd EXIF blocks, huge images and palette transparency; the file is judged by whether
            # it decodes, and per-file warnings from thousands of workers would drown the job log.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                try:
                    image.load()
                except Image.DecompressionBombError as error:
                    return b"", 0, 0, f"image too large: {joined_lines(error)}"
                except Exception as error:  # any decoder failure means a damaged file
                    return b"", 0, 0, f"truncated or corrupt image: {joined_lines(error)}"
                width, height = image.size
                if max_side is None or max(width, height) <= max_side:
                    return data, width, height, ""
                try:
                    return (*_shrink(image, max_side, jpeg_quality), "")
                except Exception as error:  # an image PIL decodes but cannot convert is unusable
                    return b"", 0, 0, f"cannot re-encode image: {joined_lines(error)}"
    except UnidentifiedImageError:
        return b"", 0, 0, "not an image: cannot identify image file"
    except Image.DecompressionBombError as error:
        return b"", 0, 0, f"image too large: {joined_lines(error)}"
    except Exception as error:  # header parsing can fail in many ways on damaged files
        return b"", 0, 0, f"truncated or corrupt image: {joined_lines(error)}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated


def _shrink(image: Image.Image, max_side: int, jpeg_quality: int) -> tuple[bytes, int, int]:
    """Resize so the long side is ``max_side`` and encode as JPEG; returns ``(bytes, width, height)``."""
    # Re-encoding drops EXIF, so bake the orientation into the pixels or rotated photos would come out sideways.
    image = ImageOps.exif_transpose(image)
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode not in ("RGB", "L"):
        # Going through RGBA handles palette transparency, which PIL refuses to drop directly without a warning.
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        image = image.convert("RGBA").convert("RGB") if has_alpha else image.convert("RGB")
    width, height = image.size
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue(), size[0], size[1]


def read_and_check_images(
    batch: pa.Table | Mapping[str, Sequence[Any]], *, max_side: int | None = None, jpeg_quality: int = 90
) -> pa.Table:
    """Read and check a batch of files; the ``map_batches`` function of :func:`~fovea.data.prepare.prepare_images`.

    Never raises on bad files: each input row yields one output row, with ``error`` naming what is wrong with it.

    Args:
        batch: Columns ``path``, ``label``, ``class_name`` and ``split`` (a pyarrow table or a dict of sequences).
        max_side: See :func:`check_image`.
        jpeg_quality: See :func:`check_image`.

    Returns:
        A table with :data:`CHECKED_SCHEMA`: ``image`` (encoded bytes), ``label``, ``class_name``, ``path``,
        ``width``, ``height`` (of the stored image), ``split`` and ``error`` (``""`` for good rows).
    """

    def column(name: str) -> list[Any]:
        return batch.column(name).to_pylist() if isinstance(batch, pa.Table) else list(batch[name])

    paths = column("path")
    images, widths, heights, errors = [], [], [], []
    for path in paths:
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as error:
            image, width, height, reason = b"", 0, 0, f"unreadable file: {error.strerror or joined_lines(error)}"
        else:
            image, width, height, reason = check_image(data, max_side=max_side, jpeg_quality=jpeg_quality)
        images.append(image)
        widths.append(width)
        heights.append(height)
        errors.append(reason)
    return pa.table(
        {
            "image": images,
            "label": [int(label) for label in column("label")],
            "class_name": [str(name) for name in column("class_name")],
            "path": [str(path) for path in paths],
            "width": widths,
            "height": heights,
            "split": [str(split) for split in column("split")],
            "error": errors,
        },
        schema=CHECKED_SCHEMA,
    )


def kept_rows_of_split(batch: pa.Table, *, split: str) -> pa.Table:
    """The good rows of one split, without the bookkeeping columns."""
    keep = pc.and_(pc.equal(batch["split"], split), pc.equal(batch["error"], ""))
    return batch.filter(keep).drop_columns([name for name in ("split", "error", "note") if name in batch.column_names])
