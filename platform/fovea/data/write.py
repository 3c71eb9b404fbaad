"""Writing a prepared dataset: checks on OUT and the labels, the shards of each split, and the final rename.

:func:`check_output_dir` and :func:`check_labels` run before any work starts; :func:`write_shards` runs the Ray
Data job that checks every item and writes each split's Parquet shards into a temporary folder, and
:func:`move_into_place` renames that folder to OUT once the manifest is in it.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fovea.data.check import kept_rows_of_split
from fovea.data.manifest import MANIFEST_FORMAT, MANIFEST_NAME
from fovea.data.scan import SPLITS


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


def check_labels(items: Sequence[Mapping[str, Any]], classes: Sequence[str], src: str | Path) -> None:
    """Check that every item's label names one of ``classes``, the class list the manifest will record.

    :func:`~fovea.data.scan.scan_source` builds the class list from the labels themselves, so its items always pass;
    a caller of :func:`~fovea.data.prepare.run_preparation` that brings its own class list (a fixed label set, a
    subset of a bigger collection) gets a one-line error here instead of shards whose labels the manifest cannot
    name.

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


def write_shards(
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
                kept_rows_of_split, batch_format="pyarrow", batch_size=None, fn_kwargs={"split": split}
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


def move_into_place(temp_dir: Path, out: Path, *, overwrite: bool) -> None:
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
