"""Streaming datasets for training: prepared Parquet shards -> Ray Data -> decoded, augmented uint8 batches.

Each epoch re-executes the pipeline: shard files are read in a new order (``FileShuffleConfig`` reseeds per
execution), decoded and augmented in ``map_batches`` on CPU, and split across the training workers by Ray Train.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fovea.data.transforms import DecodeImages

if TYPE_CHECKING:
    import ray.data


def _augment_args(data_cfg: Any) -> dict[str, Any]:
    return dict(
        crop_scale=tuple(data_cfg.crop_scale),
        crop_ratio=tuple(data_cfg.crop_ratio),
        hflip=data_cfg.hflip,
        randaugment_ops=data_cfg.randaugment_ops,
        randaugment_magnitude=data_cfg.randaugment_magnitude,
    )


def read_split(manifest: dict[str, Any], split: str, *, shuffle: str = "none", seed: int = 0) -> ray.data.Dataset:
    """The raw rows (``image`` bytes, ``label``) of one split of a prepared dataset.

    Args:
        manifest: a manifest from ``fovea.data.load_manifest`` (absolute shard paths).
        split: ``train`` or ``val``.
        shuffle: ``files`` (new shard order each epoch), ``global`` (full row shuffle each epoch) or ``none``.
        seed: seed for the shard order.

    Raises:
        ValueError: the split is missing or empty.
    """
    import ray.data
    from ray.data import FileShuffleConfig

    info = manifest["splits"].get(split)
    if not info or not info.get("shards"):
        raise ValueError(f"dataset has no {split!r} split with data (splits: {', '.join(manifest['splits'])})")
    file_shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True) if shuffle == "files" else None
    dataset = ray.data.read_parquet(info["shards"], columns=["image", "label"], shuffle=file_shuffle)
    if shuffle == "global":
        dataset = dataset.random_shuffle()
    return dataset


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
    train_decode = DecodeImages(img_size, train=True, **_augment_args(data_cfg))
    val_decode = DecodeImages(img_size, train=False, crop_pct=data_cfg.crop_pct)
    batch = data_cfg.decode_batch_size
    train = read_split(manifest, "train", shuffle=data_cfg.shuffle, seed=seed)
    val = read_split(manifest, "val")
    return {
        "train": train.map_batches(train_decode, batch_size=batch, batch_format="numpy"),
        "val": val.map_batches(val_decode, batch_size=batch, batch_format="numpy"),
    }
