"""Turn a folder or list of raw videos into a prepared dataset: Parquet shards, one row per video or segment.

The same Ray Data job as images (:func:`fovea.data.prepare.run_preparation`): the file list is built on the
driver, :func:`read_and_check_videos` probes every file in ``map_batches`` (:func:`fovea.data.video.probe_video`:
metadata, frames spread over the file decoded, with decord or, for a file decord cannot read, PyAV), bad files
become rejected rows with a one-line reason, and each split's good rows are written as shards. A row holds one of
three things in its ``video`` column (the manifest's ``storage``):

- ``encoded`` (default): the file's bytes, so training needs nothing but the shards;
- ``reference``: nothing; the row's ``path`` (a local path or URI) is read at training time, for collections too
  large to copy;
- ``decoded`` (``--pre-decode``): uint8 frames ``(num_frames, height, width, 3)``, resized so the short side is
  ``pre_decode_size`` and optionally thinned to ``pre_decode_frames`` evenly spread frames; no video decoding at
  training time, at several times the bytes.

Every row also carries ``label``, ``class_name``, ``path``, ``num_frames``, ``fps``, ``duration`` (seconds),
``width``, ``height``, ``start_frame`` and ``backend`` (the decoder that read it: training decodes it with that one
when the configured one does not read it; a file read by PyAV only is listed in ``notes``). A segment (a list's
``start``/``end`` seconds) is the frames ``[start_frame, start_frame + num_frames)`` of its file; encoded rows store
the whole file's bytes, so a file cut into many segments is better prepared ``--by-reference``.

Videos shorter than ``min_frames`` are kept and loop-padded when clips are sampled (listed in the manifest's
``notes``), or rejected with ``too_short="reject"``. Zero-byte, unreadable, truncated, damaged (a probed frame no
backend decodes) and frameless files are always rejected, the reason giving each backend's error.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fovea.data.clips import BACKENDS_KEY, STORAGES
from fovea.data.files import FileRefused, check_max_file_mb, read_limited
from fovea.data.prepare import run_preparation
from fovea.data.scan import survey_source
from fovea.data.video import VIDEO_BACKENDS, BadVideo, decode_frames, probe_video, read_bytes
from fovea.data.write import check_dedup, check_output_dir
from fovea.errors import joined_lines, typed_line

TOO_SHORT = ("pad", "reject")
# A classification clip is a few MB (Kinetics' 10 s clips: 1-10 MB); a larger file is read whole into one task's
# memory, several times over while it is probed, so it needs --max-file-mb raised on purpose.
DEFAULT_MAX_VIDEO_MB = 512.0

# What read_and_check_videos returns: one row per input item, rejected ones included (``error`` set).
CHECKED_VIDEO_SCHEMA = pa.schema(
    [
        ("video", pa.binary()),
        ("label", pa.int64()),
        ("class_name", pa.string()),
        ("path", pa.string()),
        ("num_frames", pa.int32()),
        ("fps", pa.float64()),
        ("duration", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("start_frame", pa.int32()),
        ("backend", pa.string()),  # the first of fovea.data.video.VIDEO_BACKENDS that reads the file; "" if none
        ("split", pa.string()),
        ("error", pa.string()),
        ("note", pa.string()),
        ("content_hash", pa.string()),  # hex SHA-256 of the file's bytes as read; "" for rejected rows
    ]
)


def check_video(
    data: bytes,
    *,
    start: float | None = None,
    end: float | None = None,
    storage: str = "encoded",
    min_frames: int = 8,
    too_short: str = "pad",
    pre_decode_size: int = 128,
    pre_decode_frames: int = 0,
) -> dict[str, Any]:
    """Probe one video (or a segment of it) and build its row.

    Returns:
        The row's stored columns (``video``, ``num_frames``, ``fps``, ``duration``, ``width``, ``height``,
        ``start_frame``) and ``note`` (``""`` unless worth listing).

    Raises:
        BadVideo: the one-line reason the video is rejected.
    """
    info = probe_video(data)
    start_frame = round(start * info.fps) if start else 0
    end_frame = min(info.num_frames, round(end * info.fps)) if end is not None else info.num_frames
    if start_frame >= info.num_frames:
        raise BadVideo(f"segment starts at {start:g} s, after the video's end ({info.duration:.2f} s)")
    if end_frame <= start_frame:
        raise BadVideo(f"empty segment: {start or 0:g} s to {end:g} s")
    num_frames = end_frame - start_frame
    note = ""
    if num_frames < min_frames:
        if too_short == "reject":
            raise BadVideo(f"too short: {num_frames} frames, at least {min_frames} needed")
        note = f"short: {num_frames} frames (fewer than {min_frames}); clips loop over them"
    if info.fallback:
        note = "; ".join(filter(None, [note, f"read with {info.backend}: {info.fallback}"]))
    row = {
        "video": data if storage == "encoded" else b"",
        "num_frames": num_frames,
        "fps": info.fps,
        "duration": num_frames / info.fps if info.fps > 0 else 0.0,
        "width": info.width,
        "height": info.height,
        "start_frame": start_frame,
        "backend": info.backend,
        "note": note,
    }
    if storage == "decoded":
        frames = dict(size=pre_decode_size, keep_frames=pre_decode_frames, backend=info.backend)
        row.update(_pre_decode(data, start_frame, num_frames, **frames))
        row["fps"] = row["num_frames"] / row["duration"] if row["duration"] > 0 else info.fps
    return row


def _pre_decode(
    data: bytes, start_frame: int, num_frames: int, *, size: int, keep_frames: int, backend: str
) -> dict[str, Any]:
    """Decode a video's frames (or ``keep_frames`` evenly spread ones) with the short side shrunk to ``size``."""
    import torch

    from fovea.data.clips import resize_short_side
    from fovea.data.sampling import segment_indices

    if 0 < keep_frames < num_frames:
        indices = segment_indices(num_frames, num_frames=keep_frames)  # the middle frame of equal segments
    else:
        indices = np.arange(num_frames)
    frames = decode_frames(data, indices + start_frame, backend=backend)  # (T, H, W, 3)
    height, width = frames.shape[1:3]
    if min(height, width) > size:
        clip = resize_short_side(torch.from_numpy(frames).permute(0, 3, 1, 2), size)  # (T, 3, h, w)
        frames = clip.permute(0, 2, 3, 1).contiguous().numpy()
    return {
        "video": frames.tobytes(),
        "num_frames": frames.shape[0],
        "height": frames.shape[1],
        "width": frames.shape[2],
        "start_frame": 0,
    }


def read_video_file(path: str, *, max_file_mb: float = DEFAULT_MAX_VIDEO_MB) -> bytes:
    """A video's bytes: a local file through :func:`fovea.data.files.read_limited` (a regular file of at most
    ``max_file_mb`` MiB, never read whole otherwise), a URI as pyarrow's filesystems read it."""
    if "://" in path and not path.startswith("file://"):
        return read_bytes(path)
    return read_limited(path.removeprefix("file://"), max_mb=max_file_mb)


def read_and_check_videos(
    batch: pa.Table | Mapping[str, Sequence[Any]], *, max_file_mb: float = DEFAULT_MAX_VIDEO_MB, **options: Any
) -> pa.Table:
    """Read and check a batch of videos; the ``map_batches`` function of :func:`prepare_videos`.

    Never raises on bad files: each input row yields one output row, with ``error`` naming what is wrong.

    Args:
        batch: Columns ``path``, ``label``, ``class_name``, ``split`` and optionally ``start``/``end`` (seconds).
        max_file_mb: Files larger than this (MiB) are rejected without being read (:func:`read_video_file`).
        **options: :func:`check_video`'s keyword arguments (``storage``, ``min_frames``, ...).

    Returns:
        A table with :data:`CHECKED_VIDEO_SCHEMA`.
    """

    def column(name: str) -> list[Any]:
        if isinstance(batch, pa.Table):
            return batch.column(name).to_pylist() if name in batch.column_names else [None] * batch.num_rows
        return list(batch[name]) if name in batch else [None] * len(batch["path"])

    empty = {"video": b"", "num_frames": 0, "fps": 0.0, "duration": 0.0, "width": 0, "height": 0, "start_frame": 0}
    empty["backend"] = ""
    rows = []
    for path, start, end in zip(column("path"), column("start"), column("end"), strict=True):
        try:
            data = read_video_file(path, max_file_mb=max_file_mb)
            row = {**check_video(data, start=start, end=end, **options), "error": ""}
            row["content_hash"] = hashlib.sha256(data).hexdigest()
        except OSError as error:
            row = {**empty, "note": "", "error": f"unreadable file: {error.strerror or joined_lines(error)}"}
        except (BadVideo, FileRefused) as error:
            row = {**empty, "note": "", "error": str(error)}
        except Exception as error:  # noqa: BLE001 - a decoder's surprise: one rejected row, never a failed job
            row = {**empty, "note": "", "error": f"could not be checked: {typed_line(error)}"}
        rows.append(row)
    table = {name: [row.get(name, "") for row in rows] for name in (*empty, "error", "note", "content_hash")}
    table.update(
        label=[int(label) for label in column("label")],
        class_name=[str(name) for name in column("class_name")],
        path=[str(path) for path in column("path")],
        split=[str(split) for split in column("split")],
    )
    return pa.table({name: table[name] for name in CHECKED_VIDEO_SCHEMA.names}, schema=CHECKED_VIDEO_SCHEMA)


def prepare_videos(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    shard_rows: int = 100,
    storage: str = "encoded",
    min_frames: int = 8,
    too_short: str = "pad",
    pre_decode_size: int = 128,
    pre_decode_frames: int = 0,
    overwrite: bool = False,
    num_cpus: int | None = None,
    dedup: str = "split",
    max_file_mb: float = DEFAULT_MAX_VIDEO_MB,
) -> dict[str, Any]:
    """Probe every video of SRC and write the good ones (or their segments) as a prepared dataset in OUT.

    Args:
        src: Raw dataset: class folders, ``train/``+``val/`` class folders, or a CSV/JSON list of
            ``path,label[,split][,start,end]`` (see :func:`fovea.data.scan.scan_source`).
        out: Output folder; receives ``<split>/part-NNNNN.parquet`` shards and ``manifest.json``.
        val_fraction: Share of each class held out for validation when SRC does not give splits.
        seed: Seed for the validation split and the row order.
        shard_rows: About how many rows each Parquet shard holds.
        storage: ``encoded``, ``reference`` or ``decoded`` (see the module docstring).
        min_frames: Videos with fewer frames are short: padded or rejected as ``too_short`` says.
        too_short: ``pad`` (keep; clips loop over the frames) or ``reject``.
        pre_decode_size: ``decoded`` storage: short side of the stored frames (larger frames are shrunk).
        pre_decode_frames: ``decoded`` storage: frames kept per video, evenly spread (0 = every frame).
        overwrite: Replace a prepared dataset already in OUT.
        num_cpus: CPUs of a local Ray started here (ignored when Ray is already initialized).
        dedup: Files of the same contents (and segment): ``split`` (in train and val: kept in train only), ``drop``
            (kept once) or ``keep`` (only listed); see :func:`fovea.data.write.find_duplicate_contents`.
        max_file_mb: Files larger than this (MiB) are rejected without being read (recorded in the manifest).

    Returns:
        The manifest (absolute shard paths); ``kind`` is ``video`` and ``storage`` says what rows hold.

    Raises:
        FileNotFoundError: SRC does not exist.
        FileExistsError: OUT cannot be written.
        ValueError: Bad arguments or SRC layout.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if too_short not in TOO_SHORT:
        raise ValueError(f"too_short must be one of {', '.join(TOO_SHORT)}, got {too_short!r}")
    if shard_rows < 1 or min_frames < 1 or pre_decode_size < 8 or pre_decode_frames < 0:
        raise ValueError("shard_rows and min_frames must be at least 1, pre_decode_size at least 8, frames >= 0")
    check_dedup(dedup)
    check_max_file_mb(max_file_mb)
    out = check_output_dir(out, overwrite=overwrite)
    scan = survey_source(src, val_fraction=val_fraction, seed=seed, segments=True)
    items, classes = scan.items, scan.classes
    check_kwargs = {
        "storage": storage,
        "min_frames": min_frames,
        "too_short": too_short,
        "pre_decode_size": pre_decode_size,
        "pre_decode_frames": pre_decode_frames,
        "max_file_mb": max_file_mb,
    }
    return run_preparation(
        src,
        out,
        items,
        classes,
        kind="video",
        check=read_and_check_videos,
        check_kwargs=check_kwargs,
        options={"val_fraction": val_fraction, "seed": seed, "shard_rows": shard_rows, **check_kwargs, "dedup": dedup},
        shard_rows=shard_rows,
        seed=seed,
        overwrite=overwrite,
        num_cpus=num_cpus,
        # a video row is far larger and slower to check than an image's: small batches spread the work evenly
        check_batch_size=max(1, min(16, math.ceil(len(items) / 32))),
        extra={"storage": storage, BACKENDS_KEY: list(VIDEO_BACKENDS)},  # rows carry the backend that read them
        scan=scan,
        dedup=dedup,
    )
