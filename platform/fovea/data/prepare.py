"""Turn a folder or list of raw images into a prepared dataset: Parquet shards of encoded bytes plus a manifest.

The work runs as a Ray Data job so it scales from a laptop to a cluster: the file list is built on the driver
(:func:`~fovea.data.scan.scan_source`), every file is read and fully decoded by
:func:`~fovea.data.check.read_and_check_images` inside ``map_batches``, files that fail are recorded in the manifest
instead of failing the job, and each split's good rows are written as Parquet shards of about ``shard_rows`` rows
(:mod:`fovea.data.write`). This module holds the orchestration: :func:`prepare_images` and the job shared with video
preparation, :func:`run_preparation`.

On a multi-node cluster SRC and OUT must be on a filesystem every node sees (NFS, a mounted bucket): the reading
and writing happen in Ray workers, and OUT is assembled in a temporary sibling folder that is renamed at the end.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from fovea.data.check import read_and_check_images
from fovea.data.manifest import load_manifest, write_manifest
from fovea.data.scan import scan_source
from fovea.data.write import check_labels, check_output_dir, move_into_place, write_shards


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
        src: Raw dataset; see :func:`~fovea.data.scan.scan_source` for the accepted layouts.
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
        FileExistsError: OUT cannot be written; see :func:`~fovea.data.write.check_output_dir`.
        ValueError: Bad arguments or SRC layout; see :func:`~fovea.data.scan.scan_source`.
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
        ValueError: an item's label is not one of ``classes`` (see :func:`~fovea.data.write.check_labels`), before
            any work starts.
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
            manifest = write_shards(
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
        move_into_place(temp_dir, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return load_manifest(out)
