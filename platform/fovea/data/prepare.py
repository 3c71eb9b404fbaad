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

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from fovea.data.check import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_SIDE, read_and_check_images
from fovea.data.files import check_max_file_mb
from fovea.data.images import ALLOWED_FORMATS, MAX_PIXELS
from fovea.data.manifest import accounting, load_manifest, write_manifest
from fovea.data.scan import SourceScan, survey_source
from fovea.data.write import check_dedup, check_labels, check_output_dir, move_into_place, write_shards


def prepare_images(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    shard_rows: int = 1000,
    max_side: int | None = DEFAULT_MAX_SIDE,
    jpeg_quality: int = 90,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
    overwrite: bool = False,
    num_cpus: int | None = None,
    dedup: str = "split",
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
        max_side: Images with a longer side are shrunk to it and re-encoded (JPEG; PNG when transparent); None or
            0 keeps every size (up to :data:`~fovea.data.images.MAX_PIXELS`); see
            :func:`~fovea.data.check.examine_image`.
        jpeg_quality: JPEG quality of re-encoded images (1-95).
        max_file_mb: Files larger than this many MiB are rejected without being read.
        overwrite: Replace a prepared dataset already in OUT.
        num_cpus: CPUs of the local Ray instance started when Ray is not initialized yet (ignored otherwise). A Ray
            instance started here is shut down again before returning.
        dedup: What to do with files of the same contents: ``split`` (a content in train and val is kept in train
            only), ``drop`` (kept once) or ``keep`` (only listed); see
            :func:`~fovea.data.write.find_duplicate_contents`.

    Returns:
        The manifest as :func:`~fovea.data.manifest.load_manifest` returns it (absolute shard paths).

    Raises:
        FileNotFoundError: SRC does not exist.
        FileExistsError: OUT cannot be written; see :func:`~fovea.data.write.check_output_dir`.
        ValueError: Bad arguments or SRC layout; see :func:`~fovea.data.scan.scan_source`.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
    if max_side is not None and max_side < 0:
        raise ValueError(f"max_side must be at least 1 (0 = keep every size), got {max_side}")
    check_max_file_mb(max_file_mb)
    if not 1 <= jpeg_quality <= 95:
        raise ValueError(f"jpeg_quality must be in 1..95, got {jpeg_quality}")
    check_dedup(dedup)
    out = check_output_dir(out, overwrite=overwrite)
    scan = survey_source(src, val_fraction=val_fraction, seed=seed)
    return run_preparation(
        src,
        out,
        scan.items,
        scan.classes,
        kind="image",
        check=read_and_check_images,
        check_kwargs={"max_side": max_side or None, "jpeg_quality": jpeg_quality, "max_file_mb": max_file_mb},
        options={
            "val_fraction": val_fraction,
            "seed": seed,
            "shard_rows": shard_rows,
            "max_side": max_side or None,
            "jpeg_quality": jpeg_quality,
            "max_file_mb": max_file_mb,
            "formats": list(ALLOWED_FORMATS),
            "max_pixels": MAX_PIXELS,
            "dedup": dedup,
        },
        shard_rows=shard_rows,
        seed=seed,
        overwrite=overwrite,
        num_cpus=num_cpus,
        scan=scan,
        dedup=dedup,
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
    scan: SourceScan | None = None,
    dedup: str = "split",
) -> dict[str, Any]:
    """The Ray Data job shared by image and video preparation: check every item, write shards and the manifest.

    ``check`` is the ``map_batches`` function: it turns a batch of items into one row per item, in order, with the
    stored columns plus ``path``, ``class_name``, ``split``, ``error`` (``""`` for good rows), optionally ``note``
    (kept rows worth listing in the manifest's ``notes``, e.g. short videos that are loop-padded) and optionally
    ``content_hash`` (hex SHA-256 of the bytes read; rows of equal contents are then handled as ``dedup`` says,
    see :func:`~fovea.data.write.find_duplicate_contents`). ``extra`` keys go into the manifest as they are.
    ``scan`` (from :func:`~fovea.data.scan.survey_source`) brings the entries the scan rejected, ignored or
    dropped as duplicates, so the manifest accounts for every entry of the source.

    Raises:
        ValueError: an item's label is not one of ``classes`` (see :func:`~fovea.data.write.check_labels`), before
            any work starts.
    """
    check_labels(items, classes, src)
    check_dedup(dedup)
    source_root = Path(os.path.abspath(Path(src).expanduser()))
    if source_root.is_dir() and out.is_relative_to(source_root):
        raise ValueError(f"OUT must not be inside SRC (it would become a class folder): {out}")

    import ray

    from fovea.console import active_console, rearm_signals, verbose_wanted

    print(f"checking {len(items)} {kind} files and writing the shards (Ray Data) ...", flush=True)
    temp_dir = out.parent / f"{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    temp_dir.mkdir(parents=True)
    job_console = active_console()
    try:
        started_ray = not ray.is_initialized()
        # a job's console knows its train.verbose; a script's or a library call's is FOVEA_VERBOSE (or --verbose)
        quiet = started_ray and not (job_console.verbose if job_console is not None else verbose_wanted())
        saved = _quiet_ray_data() if quiet else None
        logging_level = logging.ERROR if quiet else logging.INFO  # the driver's Ray lines (start-up, auth token)
        if started_ray and os.environ.get("RAY_ADDRESS"):  # under `ray job submit`: that cluster
            context = ray.init(logging_level=logging_level)
        elif started_ray:  # a short local Ray of our own: no dashboard (about 0.3 GB less, and a faster start);
            # address="local" even when a `ray start` cluster runs here (ray.init() would join it, refusing num_cpus)
            context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging_level)
        if started_ray:
            rearm_signals()  # a script's Ctrl-C and SIGTERM stop it (fovea.jobs.run_stoppable)
        if quiet:
            session = (getattr(context, "address_info", None) or {}).get("session_dir")
            if session:
                print(f"Ray's own logs: {session}/logs (--verbose or FOVEA_VERBOSE=1 prints them)", flush=True)
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
                dedup=dedup,
                renderer=job_console.renderer if job_console is not None else None,
            )
        finally:
            # Leave Ray as we found it: a caller that calls ray.init() after us would otherwise fail.
            if started_ray:
                ray.shutdown()
            if saved is not None:
                _restore_ray_data(saved)
        _account_for_scan(manifest, scan)
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


_DATA_CONTEXT_BARS = ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start")


def _quiet_ray_data() -> dict[str, Any]:
    """Before a Ray of our own starts: Ray Data's console to errors (its file log in the session folder keeps
    everything; :func:`fovea.console.quiet_environment`) and no Ray Data progress bars or execution-plan lines
    (fovea's own progress line says what matters). Returns the settings it changed, for
    :func:`_restore_ray_data`."""
    from fovea.console import quiet_environment
    from fovea.paths import fovea_home

    quiet_environment(fovea_home())  # before ray.data is first imported: it reads its logging config then
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = {name: getattr(context, name) for name in _DATA_CONTEXT_BARS}
    saved["ray_logger_level"] = logging.getLogger("ray").level
    for name in _DATA_CONTEXT_BARS:
        setattr(context, name, False)
    return saved


def _restore_ray_data(saved: dict[str, Any]) -> None:
    """Put back what :func:`_quiet_ray_data` changed in this process (a library caller's own Ray Data use)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    for name in _DATA_CONTEXT_BARS:
        setattr(context, name, saved[name])
    logging.getLogger("ray").setLevel(saved["ray_logger_level"])


def _account_for_scan(manifest: dict[str, Any], scan: SourceScan | None) -> None:
    """Add the scan's rejected, ignored and duplicate entries to the manifest, and the ``accounting`` of them all."""
    if scan is not None:
        manifest["rejected"] = sorted(scan.rejected + manifest["rejected"], key=lambda entry: entry["path"])
        manifest["duplicates"] = sorted(scan.duplicates + manifest["duplicates"], key=lambda entry: entry["path"])
    manifest["ignored"] = list(scan.ignored) if scan is not None else []
    manifest["accounting"] = accounting(manifest)
