"""Turn a folder or list of raw images into a prepared dataset: Parquet shards of encoded bytes plus a manifest.

The work runs as a Ray Data job so it scales from a laptop to a cluster: the file list is built on the driver
(:func:`scan_source`), every file is read and fully decoded by :func:`read_and_check_images` inside ``map_batches``,
files that fail are recorded in the manifest instead of failing the job, and each split's good rows are written as
Parquet shards of about ``shard_rows`` rows.

On a multi-node cluster SRC and OUT must be on a filesystem every node sees (NFS, a mounted bucket): the reading
and writing happen in Ray workers, and OUT is assembled in a temporary sibling folder that is renamed at the end.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
import uuid
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fovea.data.manifest import MANIFEST_FORMAT, MANIFEST_NAME, load_manifest, write_manifest
from fovea.errors import joined_lines

SPLITS = ("train", "val")
# Names accepted for a split, in folder layouts and in the ``split`` column of CSV/JSON lists.
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val"}
_LIST_SUFFIXES = (".csv", ".json")

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


# --------------------------------------------------------------------------------------------------------------------
# Scanning the source
# --------------------------------------------------------------------------------------------------------------------


# (path, class_name, split or None when the source does not say)
_Entry = tuple[str, str, str | None]
# (start, end) seconds of a segment of a video; None where the list leaves it open
_Segment = tuple[float | None, float | None]
# Column names a list may use for a segment's bounds (ours, then the Kinetics annotation files').
_START_COLUMNS = ("start", "time_start")
_END_COLUMNS = ("end", "time_end")


def scan_source(
    src: str | Path, *, val_fraction: float = 0.1, seed: int = 0, segments: bool = False
) -> tuple[list[dict], list[str]]:
    """List every file of a raw image or video dataset with its class and split.

    SRC may be a folder of class subfolders (``SRC/<class>/...``); a folder whose ``train/`` and ``val/`` (or
    ``validation/``) each hold class subfolders (other folders next to them, e.g. ``test/``, are ignored; with
    ``train/`` alone the val split is carved out of it); or a CSV file with a header holding ``path,label[,split]``,
    or a JSON file holding a list of objects with those keys (relative paths are resolved against the list's
    folder; a path holding ``://`` is a URI and is kept as it is). Class folders are walked recursively; hidden
    files and folders are skipped. Files are not opened here: unreadable or unusable files become rejected rows
    later.

    With ``segments`` (videos), a list may also give ``start`` and ``end`` seconds (or Kinetics' ``time_start`` and
    ``time_end``) to use only part of a file; one file may then appear several times, once per segment, and all
    its segments land in the same split.

    Without given splits, each class puts a seeded ``val_fraction`` of its files in ``val`` (at least one when it
    has two or more files and ``val_fraction > 0``, and never all of them). Classes are sorted by name, or by
    number when every name is a non-negative integer, and ``label`` is the index into that list.

    Args:
        src: The dataset folder or list file.
        val_fraction: Share of each class held out for validation when SRC does not give splits; in ``[0, 1)``.
        seed: Seed of the validation split; the same seed gives the same split.
        segments: Accept ``start``/``end`` columns in lists; every item then has ``start`` and ``end`` keys (seconds,
            or None for the file's own start or end).

    Returns:
        ``(items, classes)``: items are dicts with ``path`` (absolute), ``class_name``, ``label`` and ``split``
        (``"train"`` or ``"val"``), sorted by split then path.

    Raises:
        FileNotFoundError: SRC does not exist.
        ValueError: SRC has no class subfolders or no files, a list lacks columns or names an unknown split, or an
            argument is out of range.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    root = Path(os.path.abspath(Path(src).expanduser()))
    if not root.exists():
        raise FileNotFoundError(f"SRC not found: {src}")

    if root.is_dir():
        entries = _scan_folder(root)
        bounds: list[_Segment] = [(None, None)] * len(entries)
    elif root.suffix.lower() in _LIST_SUFFIXES:
        entries, bounds = _scan_list_file(root)
        if not segments and any(bound != (None, None) for bound in bounds):
            raise ValueError(f"{src} gives start/end times: segments are for videos (pipelines/prepare_videos.py)")
    else:
        raise ValueError(f"SRC must be a folder or a .csv/.json list, got {src}")
    if not entries:
        raise ValueError(f"no files found in {src}")

    classes = _sort_class_names({class_name for _, class_name, _ in entries})
    entries = _assign_val_split(entries, val_fraction=val_fraction, seed=seed)
    label_of = {name: label for label, name in enumerate(classes)}
    items = []
    for (path, class_name, split), (start, end) in zip(entries, bounds, strict=True):
        item = {"path": path, "class_name": class_name, "label": label_of[class_name], "split": split}
        if segments:
            item.update(start=start, end=end)
        items.append(item)
    items.sort(key=lambda item: (SPLITS.index(item["split"]), item["path"], item.get("start") or 0.0))
    return items, classes


def _visible_subfolders(folder: Path) -> list[Path]:
    """Non-hidden subfolders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files_under(folder: Path) -> list[str]:
    """Every non-hidden regular file below ``folder`` (recursively, hidden folders skipped), sorted."""
    files = []
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        files.extend(
            os.path.join(directory, name)
            for name in names
            if not name.startswith(".") and os.path.isfile(os.path.join(directory, name))
        )
    return sorted(files)


def _scan_class_folders(folder: Path, split: str | None) -> list[_Entry]:
    """Entries of a ``folder/<class>/...`` tree; empty class folders contribute nothing (and so are no class)."""
    class_dirs = _visible_subfolders(folder)
    if not class_dirs:
        raise ValueError(
            f"{folder} has no class subfolders: expected {folder}/<class>/<image> "
            f"or {folder}/train/<class>/<image> and {folder}/val/<class>/<image>"
        )
    return [(path, class_dir.name, split) for class_dir in class_dirs for path in _files_under(class_dir)]


def _scan_folder(root: Path) -> list[_Entry]:
    """Entries of a class-folder tree, with or without ``train/`` and ``val/`` on top."""
    subfolders = {p.name: p for p in _visible_subfolders(root)}
    # A folder counts as a split folder only when it holds class folders itself; otherwise it is a class named
    # e.g. "train" in a plain class-folder layout.
    split_dirs = {
        name: path for name, path in subfolders.items() if name in _SPLIT_ALIASES and _visible_subfolders(path)
    }
    if not split_dirs:
        return _scan_class_folders(root, split=None)
    if "val" in split_dirs and "validation" in split_dirs:
        raise ValueError(f"{root} has both val/ and validation/: keep one")
    if "train" not in split_dirs:
        raise ValueError(f"{root} has a {next(iter(split_dirs))}/ folder but no train/ folder")
    entries = []
    for name, path in split_dirs.items():
        entries.extend(_scan_class_folders(path, split=_SPLIT_ALIASES[name]))
    if len(split_dirs) == 1:
        # train/ alone: leave the split open so _assign_val_split carves val out of it.
        entries = [(path, class_name, None) for path, class_name, _ in entries]
    return entries


def _scan_list_file(file: Path) -> tuple[list[_Entry], list[_Segment]]:
    """Entries of a CSV or JSON list of ``{path, label[, split][, start, end]}`` records, and their segments."""
    if file.suffix.lower() == ".csv":
        with open(file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = columns
            records: list[Mapping[str, Any]] = list(reader)
    else:
        try:
            records = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{file} is not valid JSON: {error}") from None
        if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
            raise ValueError(f"{file} must hold a JSON list of objects with keys path, label[, split]")
        columns = sorted({key for record in records for key in record})

    missing = [name for name in ("path", "label") if name not in columns]
    if missing and (records or file.suffix.lower() == ".csv"):
        raise ValueError(f"{file} lacks column(s) {', '.join(missing)}: expected path,label[,split]")
    has_split = "split" in columns
    base = file.parent
    entries, bounds = [], []
    for number, record in enumerate(records, start=1):
        where = f"{file.name} record {number}"
        path, label = record.get("path"), record.get("label")
        if path is None or str(path).strip() == "" or label is None or str(label).strip() == "":
            raise ValueError(f"{where} has an empty path or label")
        split = None
        if has_split:
            given = str(record.get("split") or "").strip()
            if given not in _SPLIT_ALIASES:
                raise ValueError(f"{where} has unknown split {given!r}: expected train, val or validation")
            split = _SPLIT_ALIASES[given]
        path = str(path).strip()
        full_path = path if "://" in path else os.path.abspath(os.path.join(base, os.path.expanduser(path)))
        entries.append((full_path, str(label).strip(), split))
        bounds.append((_seconds(record, _START_COLUMNS, where), _seconds(record, _END_COLUMNS, where)))
    return entries, bounds


def _seconds(record: Mapping[str, Any], names: Sequence[str], where: str) -> float | None:
    """The first of ``names`` the record gives, as non-negative seconds; None when it gives none (or blank)."""
    for name in names:
        value = record.get(name)
        if value is None or str(value).strip() == "":
            continue
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"{where} has {name}={value!r}: expected seconds") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{where} has {name}={value!r}: expected non-negative seconds")
        return seconds
    return None


def _sort_class_names(names: Iterable[str]) -> list[str]:
    """Class names sorted by name, or by value when all are integers, so that label ``i`` is class ``"i"``."""
    names = list(names)
    if names and all(name.isdecimal() for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def _assign_val_split(entries: list[_Entry], *, val_fraction: float, seed: int) -> list[_Entry]:
    """Fill in the split of entries that have none with a seeded, per-class draw of ``val_fraction``."""
    open_by_class: dict[str, list[str]] = {}
    for path, class_name, split in entries:
        if split is None:
            open_by_class.setdefault(class_name, []).append(path)
    if not open_by_class:
        return entries

    val_paths = set()
    for class_name, paths in open_by_class.items():
        paths = sorted(paths)
        count = len(paths)
        num_val = 0 if val_fraction == 0 or count < 2 else min(count - 1, max(1, round(count * val_fraction)))
        # Seed per class from its name, so one class's draw does not change when other classes come or go.
        rng = np.random.default_rng([seed, zlib.crc32(class_name.encode("utf-8"))])
        val_paths.update(paths[index] for index in rng.permutation(count)[:num_val])
    return [
        (path, class_name, split if split is not None else ("val" if path in val_paths else "train"))
        for path, class_name, split in entries
    ]


# --------------------------------------------------------------------------------------------------------------------
# Reading and checking images (runs inside Ray Data's map_batches; plain functions, testable without Ray)
# --------------------------------------------------------------------------------------------------------------------


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
    """Read and check a batch of files; the ``map_batches`` function of :func:`prepare_images`.

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


def _kept_rows_of_split(batch: pa.Table, *, split: str) -> pa.Table:
    """The good rows of one split, without the bookkeeping columns."""
    keep = pc.and_(pc.equal(batch["split"], split), pc.equal(batch["error"], ""))
    return batch.filter(keep).drop_columns([name for name in ("split", "error", "note") if name in batch.column_names])


# --------------------------------------------------------------------------------------------------------------------
# The Ray Data job
# --------------------------------------------------------------------------------------------------------------------


def check_output_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Check that a prepared dataset may be written to ``out`` before any work starts.

    Args:
        out: The output folder.
        overwrite: Allow replacing a prepared dataset (a folder holding a manifest) already at ``out``.

    Returns:
        ``out`` as an absolute path.

    Raises:
        FileExistsError: ``out`` holds a prepared dataset and ``overwrite`` is false, or it is a file, or a non-empty
            folder that is not a prepared dataset (never deleted, whatever ``overwrite`` says).
    """
    out = Path(os.path.abspath(Path(out).expanduser()))
    if not out.exists():
        return out
    if not out.is_dir():
        raise FileExistsError(f"OUT exists and is not a folder: {out}")
    if (out / MANIFEST_NAME).exists():
        if not overwrite:
            raise FileExistsError(f"OUT already holds a prepared dataset: {out} (use --overwrite / overwrite=True)")
        return out
    if any(out.iterdir()):
        raise FileExistsError(f"OUT is a non-empty folder without {MANIFEST_NAME}: {out}; refusing to write into it")
    return out


def prepare_images(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    shard_rows: int = 1000,
    max_side: int | None = None,
    jpeg_quality: int = 90,
    overwrite: bool = False,
    num_cpus: int | None = None,
) -> dict[str, Any]:
    """Validate every image of SRC and write the good ones as a prepared dataset in OUT.

    Everything that can be checked without Ray (arguments, SRC layout, OUT) is checked before Ray starts. The
    dataset is assembled in a temporary sibling of OUT and renamed into place at the end, so a crash never leaves a
    half-written folder that looks complete.

    Args:
        src: Raw dataset; see :func:`scan_source` for the accepted layouts.
        out: Output folder; receives ``<split>/part-NNNNN.parquet`` shards and ``manifest.json``.
        val_fraction: Share of each class held out for validation when SRC does not give splits.
        seed: Seed for the validation split and for the row order (shards mix classes).
        shard_rows: About how many rows each Parquet shard holds.
        max_side: When set, images with a longer side are shrunk to it and re-encoded as JPEG.
        jpeg_quality: JPEG quality of re-encoded images (1-95).
        overwrite: Replace a prepared dataset already in OUT.
        num_cpus: CPUs of the local Ray instance started when Ray is not initialized yet (ignored otherwise). A Ray
            instance started here is shut down again before returning.

    Returns:
        The manifest as :func:`~fovea.data.manifest.load_manifest` returns it (absolute shard paths).

    Raises:
        FileNotFoundError: SRC does not exist.
        FileExistsError: OUT cannot be written; see :func:`check_output_dir`.
        ValueError: Bad arguments or SRC layout; see :func:`scan_source`.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    if not 1 <= jpeg_quality <= 95:
        raise ValueError(f"jpeg_quality must be in 1..95, got {jpeg_quality}")
    out = check_output_dir(out, overwrite=overwrite)
    items, classes = scan_source(src, val_fraction=val_fraction, seed=seed)
    return run_preparation(
        src,
        out,
        items,
        classes,
        kind="image",
        check=read_and_check_images,
        check_kwargs={"max_side": max_side, "jpeg_quality": jpeg_quality},
        options={
            "val_fraction": val_fraction,
            "seed": seed,
            "shard_rows": shard_rows,
            "max_side": max_side,
            "jpeg_quality": jpeg_quality,
        },
        shard_rows=shard_rows,
        seed=seed,
        overwrite=overwrite,
        num_cpus=num_cpus,
    )


def run_preparation(
    src: str | Path,
    out: Path,
    items: list[dict],
    classes: list[str],
    *,
    kind: str,
    check: Callable[..., pa.Table],
    check_kwargs: dict[str, Any],
    options: dict[str, Any],
    shard_rows: int,
    seed: int,
    overwrite: bool,
    num_cpus: int | None,
    check_batch_size: int = 64,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Ray Data job shared by image and video preparation: check every item, write shards and the manifest.

    ``check`` is the ``map_batches`` function: it turns a batch of items into one row per item with the stored
    columns plus ``path``, ``class_name``, ``split``, ``error`` (``""`` for good rows) and optionally ``note``
    (kept rows worth listing in the manifest's ``notes``, e.g. short videos that are loop-padded). ``extra`` keys
    go into the manifest as they are.

    Raises:
        ValueError: an item's label is not one of ``classes`` (see :func:`check_labels`), before any work starts.
    """
    check_labels(items, classes, src)
    source_root = Path(os.path.abspath(Path(src).expanduser()))
    if source_root.is_dir() and out.is_relative_to(source_root):
        raise ValueError(f"OUT must not be inside SRC (it would become a class folder): {out}")

    import ray

    temp_dir = out.parent / f"{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    temp_dir.mkdir(parents=True)
    try:
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(num_cpus=num_cpus)
        try:
            manifest = _write_shards(
                items,
                classes,
                temp_dir,
                shard_rows=shard_rows,
                seed=seed,
                check=check,
                check_kwargs=check_kwargs,
                check_batch_size=check_batch_size,
                kind=kind,
            )
        finally:
            # Leave Ray as we found it: a caller that calls ray.init() after us would otherwise fail.
            if started_ray:
                ray.shutdown()
        manifest.update(extra or {})
        manifest["source"] = str(src)
        manifest["options"] = options
        # The manifest is written last, so its presence marks a complete dataset.
        write_manifest(temp_dir, manifest)
        _move_into_place(temp_dir, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return load_manifest(out)


def check_labels(items: Sequence[Mapping[str, Any]], classes: Sequence[str], src: str | Path) -> None:
    """Check that every item's label names one of ``classes``, the class list the manifest will record.

    :func:`scan_source` builds the class list from the labels themselves, so its items always pass; a caller of
    :func:`run_preparation` that brings its own class list (a fixed label set, a subset of a bigger collection) gets
    a one-line error here instead of shards whose labels the manifest cannot name.

    Raises:
        ValueError: naming the first offending label and the file (from ``src``) it belongs to.
    """
    index: dict[str, int] = {}
    for position, name in enumerate(classes):
        if name in index:
            raise ValueError(f"the class list of {src} names {name!r} twice (positions {index[name]} and {position})")
        index[name] = position
    shown = ", ".join(classes[:10]) + (f", ... ({len(classes)} in all)" if len(classes) > 10 else "")
    for item in items:
        name, label = item["class_name"], item["label"]
        if name not in index:
            raise ValueError(f"{item['path']} (in {src}) has label {name!r}, which is not one of the classes: {shown}")
        if label != index[name]:
            raise ValueError(
                f"{item['path']} (in {src}) has label number {label} for class {name!r}, which is number {index[name]}"
            )


def _write_shards(
    items: list[dict],
    classes: list[str],
    temp_dir: Path,
    *,
    shard_rows: int,
    seed: int,
    check: Callable[..., pa.Table],
    check_kwargs: dict[str, Any],
    check_batch_size: int,
    kind: str,
) -> dict[str, Any]:
    """Run the Ray Data job that checks every item and writes each split's shards under ``temp_dir``.

    Returns:
        The manifest, without ``source`` and ``options``.
    """
    import ray

    # Shuffle before Ray sees the list: the input is sorted by class, and blocks (hence shards) would otherwise
    # each hold one or two classes, which makes file-level shuffling at training time far weaker.
    order = np.random.default_rng(seed).permutation(len(items))
    shuffled = [items[index] for index in order]
    checked = (
        ray.data.from_items(shuffled)
        .map_batches(check, batch_format="pyarrow", batch_size=check_batch_size, fn_kwargs=check_kwargs)
        .materialize()
    )
    # Only the small bookkeeping columns come back to the driver; the image bytes stay in the object store.
    has_notes = "note" in checked.schema().names
    bookkeeping = checked.select_columns(["path", "class_name", "split", "error"] + (["note"] if has_notes else []))
    rows = pa.concat_tables(list(bookkeeping.iter_batches(batch_size=None, batch_format="pyarrow"))).to_pydict()
    rejected = sorted(
        ({"path": path, "reason": error} for path, error in zip(rows["path"], rows["error"], strict=True) if error),
        key=lambda entry: entry["path"],
    )
    notes = sorted(
        (
            {"path": path, "note": note}
            for path, note, error in zip(
                rows["path"], rows.get("note") or [""] * len(rows["path"]), rows["error"], strict=True
            )
            if note and not error
        ),
        key=lambda entry: entry["path"],
    )
    counts = Counter(
        (split, class_name)
        for split, class_name, error in zip(rows["split"], rows["class_name"], rows["error"], strict=True)
        if not error
    )

    splits = {}
    for split in SPLITS:
        class_counts = {name: counts[(split, name)] for name in classes}
        count = sum(class_counts.values())
        shards = []
        if count:
            split_dir = temp_dir / split
            kept = checked.map_batches(
                _kept_rows_of_split, batch_format="pyarrow", batch_size=None, fn_kwargs={"split": split}
            )
            # One block per shard: write_parquet writes one file per block.
            kept.repartition(math.ceil(count / shard_rows)).write_parquet(str(split_dir))
            shards = _rename_shards(split_dir)
        splits[split] = {"count": count, "shards": shards, "class_counts": class_counts}
    return {
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "classes": classes,
        "splits": splits,
        "rejected": rejected,
        **({"notes": notes} if has_notes else {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _rename_shards(split_dir: Path) -> list[str]:
    """Give Ray's ``<uuid>_<task>-<i>.parquet`` files stable names; returns paths relative to the dataset folder."""
    shards = []
    for index, file in enumerate(sorted(split_dir.glob("*.parquet"))):
        target = split_dir / f"part-{index:05d}.parquet"
        file.rename(target)
        shards.append(f"{split_dir.name}/{target.name}")
    return shards


def _move_into_place(temp_dir: Path, out: Path, *, overwrite: bool) -> None:
    """Rename the finished ``temp_dir`` to ``out``, replacing a dataset there only when ``overwrite`` allows it."""
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        # Fails (rather than merging) if another process created OUT meanwhile.
        os.rename(temp_dir, out)
        return
    if not overwrite or not (out / MANIFEST_NAME).exists():
        raise FileExistsError(f"OUT was created by someone else while preparing: {out}")
    # Move the old dataset aside first so OUT lacks a manifest only between two renames.
    old = out.parent / f"{out.name}.old-{uuid.uuid4().hex[:8]}-{int(time.time())}"
    os.rename(out, old)
    os.rename(temp_dir, out)
    shutil.rmtree(old, ignore_errors=True)
