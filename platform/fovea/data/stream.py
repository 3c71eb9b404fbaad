"""Streaming datasets for training: prepared Parquet shards -> Ray Data -> decoded, augmented uint8 batches.

Each epoch re-executes the pipeline: rows are read in a new order, decoded and augmented in ``map_batches`` on
CPU, and split across the training workers by Ray Train. Where the encoded rows come from depends on their size:

- a split whose shards total at most ``data.cache_max_mb`` is read once, cut into blocks of ``decode_batch_size``
  rows and kept in Ray's object store; each epoch visits the blocks in a new seeded order. Reading and listing
  the shard files costs about a second per epoch, as much as decoding a small split, and one shard file is one
  block: blocks as small as a decode batch keep every CPU busy from the first batch;
- a larger split streams from its shard files every epoch, in a new seeded file order, one read task per file.

Either way each shard file is read by its own task (``fovea.data.shards.read_shards``, not ``read_parquet``, whose
reader packs small files into one task and re-reads every footer each epoch: one bad file there costs the rows of
its neighbours, or the whole epoch), so a shard that fails to read is one errored block, skipped within what is left
of ``data.max_bad_shards``. A row that fails to decode is dropped by the decode step, which names its file and counts
it in the run's tally (:mod:`fovea.data.decode_failures`, started here) for the training worker's epoch warning.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fovea.data.clips import ClipSpec, DecodeClips, clip_columns
from fovea.data.decode_failures import FlushEachBatch, open_tally
from fovea.data.shards import (
    BadShardsError,
    errored_block_budget,
    paths_and_filesystem,
    read_shards,
    shard_read_problem,
)
from fovea.data.transforms import DecodeImages

if TYPE_CHECKING:
    import ray.data


def augment_args(data_cfg: Any) -> dict[str, Any]:
    return dict(
        crop_scale=tuple(data_cfg.crop_scale),
        crop_ratio=tuple(data_cfg.crop_ratio),
        hflip=data_cfg.hflip,
        randaugment_ops=data_cfg.randaugment_ops,
        randaugment_magnitude=data_cfg.randaugment_magnitude,
    )


def configure_data_context(progress_bars: bool = False) -> None:
    """Ray Data settings for fovea's pipelines, on the current ``DataContext`` (Ray Train ships it to the workers).

    Operator resource reservation is turned off: by default Ray Data sets aside half the CPUs for each operator,
    which on a small node leaves the decode operator running one task at a time while a CPU idles (2 CPUs,
    demo videos: 223 clips/s with it, 362 without). fovea's pipelines are short read -> decode chains that the
    object-store backpressure already keeps in balance.
    """
    from ray.data import DataContext

    context = DataContext.get_current()
    context.op_resource_reservation_enabled = False
    # Ray Data's per-operator bars flood a job log once per epoch; the epoch line says what matters.
    context.enable_progress_bars = progress_bars
    context.enable_operator_progress_bars = progress_bars
    context.print_on_execution_start = progress_bars


def read_split(
    manifest: dict[str, Any],
    split: str,
    *,
    shuffle: str = "none",
    seed: int = 0,
    columns: list[str] | None = None,
    cache_max_mb: float = 0.0,
    block_rows: int = 64,
    max_bad_shards: int = 0,
) -> ray.data.Dataset:
    """The raw rows (by default ``image`` bytes and ``label``) of one split of a prepared dataset.

    Args:
        manifest: a manifest from ``fovea.data.load_manifest`` (absolute shard paths), maybe checked by
            ``fovea.data.shards.check_shards`` (the shards it dropped count against ``max_bad_shards``).
        split: ``train`` or ``val``.
        shuffle: ``files`` (new shard order each epoch), ``global`` (full row shuffle each epoch) or ``none``.
        seed: seed for the shard order.
        columns: the columns to read (default ``["image", "label"]``).
        cache_max_mb: keep the split's rows in the object store when its local shard files total at most this.
        block_rows: rows per block of a cached split.
        max_bad_shards: shard files of the split that may fail to read (-1 = any): each is skipped with Ray Data's
            error log naming it; one more fails the pass over the split (a cached split: this call).

    Raises:
        ValueError: the split is missing or empty.
        BadShardsError: a cached split's shards failed to read past the budget (one line naming one of them).
    """
    from ray.data import RandomSeedConfig

    info = manifest["splits"].get(split)
    if not info or not info.get("shards"):
        raise ValueError(f"dataset has no {split!r} split with data (splits: {', '.join(manifest['splits'])})")
    columns = columns or ["image", "label"]
    shards, filesystem = paths_and_filesystem(info["shards"])
    reseeded = RandomSeedConfig(seed=seed, reseed_after_execution=True)
    budget = errored_block_budget(info, max_bad_shards)
    if filesystem is None and _local_size_mb(shards) <= cache_max_mb:
        count = int(info["count"])
        rows = read_shards(shards, columns, max_errored_blocks=budget)
        try:
            # at least 32 blocks (when there are that many rows), so a small split still gets a real new order
            dataset = rows.repartition(max(1, math.ceil(count / block_rows), min(count, 32))).materialize()
        except Exception as err:
            problem = shard_read_problem(err)
            if problem is None:
                raise
            raise BadShardsError(
                f"{split} split: {problem}; more shard files failed than data.max_bad_shards={max_bad_shards} allows"
            ) from None
        if shuffle == "files":
            return dataset.randomize_block_order(seed=reseeded)
    else:
        order = seed if shuffle == "files" else None
        dataset = read_shards(shards, columns, filesystem=filesystem, shuffle_seed=order, max_errored_blocks=budget)
    if shuffle == "global":
        return dataset.random_shuffle(seed=reseeded)
    return dataset


def _local_size_mb(paths: list[str]) -> float:
    """Total size of local files in MiB; infinite when any is remote or missing (such splits always stream)."""
    try:
        return sum(os.path.getsize(path) for path in paths) / 2**20
    except OSError:
        return math.inf


def build_image_datasets(
    manifest: dict[str, Any], data_cfg: Any, *, img_size: int, seed: int = 0
) -> dict[str, ray.data.Dataset]:
    """Train and val datasets that yield ``{"image": uint8 (N, 3, img_size, img_size), "label": int64}``.

    Args:
        manifest: the prepared dataset's manifest.
        data_cfg: the run's ``data`` section (augmentation, shuffling, decode batch size).
        img_size: the model's input resolution.
        seed: seed for the shard order.
    """
    # A callable instance (not a class) runs as plain Ray tasks on reused worker processes: no actor start-up
    # per epoch, which matters on small machines.
    if data_cfg.jpeg_decode == "device":  # the tasks only plan the crops; the worker decodes on its device
        from fovea.data.device_decode import PlanCrops

        augment = {k: v for k, v in augment_args(data_cfg).items() if not k.startswith("randaugment")}
        train_decode: Any = PlanCrops(img_size, train=True, background=data_cfg.alpha_rgb, **augment)
        val_decode: Any = PlanCrops(img_size, train=False, crop_pct=data_cfg.crop_pct, background=data_cfg.alpha_rgb)
    else:  # rows that fail to decode are counted after each batch, and named by their path
        train_decode = FlushEachBatch(
            DecodeImages(img_size, train=True, background=data_cfg.alpha_rgb, **augment_args(data_cfg))
        )
        val_decode = FlushEachBatch(
            DecodeImages(img_size, train=False, crop_pct=data_cfg.crop_pct, background=data_cfg.alpha_rgb)
        )
    open_tally()
    batch = data_cfg.decode_batch_size
    cache = dict(cache_max_mb=data_cfg.cache_max_mb, block_rows=batch, max_bad_shards=data_cfg.max_bad_shards)
    if data_cfg.jpeg_decode != "device":
        cache["columns"] = ["image", "label", "path"]
    train = read_split(manifest, "train", shuffle=data_cfg.shuffle, seed=seed, **cache)
    val = read_split(manifest, "val", **cache)
    return {
        "train": train.map_batches(train_decode, batch_size=batch, batch_format="numpy"),
        "val": val.map_batches(val_decode, batch_size=batch, batch_format="numpy"),
    }


def clip_spec(data_cfg: Any, *, img_size: int, num_frames: int) -> ClipSpec:
    """The clip geometry and augmentation a run's ``data`` section asks for."""
    return ClipSpec(
        img_size=img_size,
        num_frames=num_frames,
        frame_interval=data_cfg.frame_interval,
        sampling=data_cfg.sampling,
        scale=tuple(data_cfg.scale_jitter),
        hflip=data_cfg.hflip,
        crop_pct=data_cfg.crop_pct,
        num_temporal_clips=data_cfg.num_temporal_clips,
        num_spatial_crops=data_cfg.num_spatial_crops,
    )


def build_video_datasets(
    manifest: dict[str, Any], data_cfg: Any, *, img_size: int, num_frames: int, seed: int = 0
) -> dict[str, ray.data.Dataset]:
    """Train and val datasets of uint8 clips ``{"video": (N, 3, T, S, S), "label": int64}``.

    ``val`` is single-view (the centre clip and crop); ``val_views`` (only when the run asks for more than one
    view) yields ``(N, V, 3, T, S, S)``, all ``num_temporal_clips x num_spatial_crops`` views of each video
    together, so the evaluator can average a video's logits without matching rows across workers.

    Args:
        manifest: a prepared video dataset's manifest (``kind: video``).
        data_cfg: the run's ``data`` section (sampling, augmentation, decoding, shuffling).
        img_size: the model's input resolution.
        num_frames: frames per clip (the model's).
        seed: seed for the shard order and the training clips.
    """
    spec = clip_spec(data_cfg, img_size=img_size, num_frames=num_frames)
    storage = manifest.get("storage", "encoded")
    decode = dict(storage=storage, backend=data_cfg.video_backend, decode_threads=data_cfg.decode_threads)
    batch = data_cfg.decode_batch_size
    cache = dict(cache_max_mb=data_cfg.cache_max_mb, block_rows=batch, max_bad_shards=data_cfg.max_bad_shards)
    cache["columns"] = clip_columns(manifest)
    open_tally()
    train = read_split(manifest, "train", shuffle=data_cfg.shuffle, seed=seed, **cache)
    val = read_split(manifest, "val", **cache)
    step, planned = DecodeClips, decode
    if data_cfg.video_decode == "device":  # the tasks read bytes and pick frames; the worker decodes on its device
        from fovea.data.device_decode import PlanClips

        step, planned = PlanClips, dict(storage=storage, backend=data_cfg.video_backend)
    datasets = {
        "train": train.map_batches(
            step(spec, train=True, seed=seed, **planned), batch_size=batch, batch_format="numpy"
        ),
        "val": val.map_batches(
            step(replace(spec, num_temporal_clips=1, num_spatial_crops=1), train=False, **planned),
            batch_size=batch,
            batch_format="numpy",
        ),
    }
    if spec.num_views > 1:
        # views multiply the decoded bytes per row: smaller batches keep blocks a sensible size; decoded here even
        # with data.video_decode=device (the final multi-view test reads them as tensors)
        datasets["val_views"] = val.map_batches(
            DecodeClips(spec, train=False, **decode),
            batch_size=max(1, batch // spec.num_views),
            batch_format="numpy",
        )
    return datasets
