"""Writing a prepared dataset: checks on OUT and the labels, the shards of each split, and the final rename.

:func:`check_output_dir` and :func:`check_labels` run before any work starts; :func:`write_shards` runs the Ray
Data job that checks every item (counting files checked and rejected as the checked blocks come back,
:class:`CheckProgress`), drops copies of one content as ``dedup`` says (:func:`find_duplicate_contents`, on the
checked rows' ``content_hash``) and writes each split's Parquet shards into a temporary folder, and
:func:`move_into_place` renames that folder to OUT once the manifest is in it.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fovea.data.check import kept_rows_of_split
from fovea.data.manifest import MANIFEST_FORMAT, MANIFEST_NAME
from fovea.data.scan import SPLIT_RANK, SPLITS, is_utf8, shown_path

# What preparation does with files of the same contents (find_duplicate_contents).
DEDUP_MODES = ("split", "drop", "keep")
# The reason recorded for a copy of a content kept elsewhere, by dedup mode: across splits, and within one split.
SAME_CONTENTS_ACROSS = {
    "split": "same contents in train and val: kept in train only (--dedup=split)",
    "drop": "same contents: kept once (--dedup=drop)",
    "keep": "same contents in train and val: both kept (--dedup=keep)",
}
SAME_CONTENTS = {
    "split": "same contents in one split: both kept (--dedup=split drops only copies across splits)",
    "drop": "same contents: kept once (--dedup=drop)",
    "keep": "same contents: both kept (--dedup=keep)",
}
# Columns of checked rows that are bookkeeping, not stored in shards (besides split/error/note).
_BOOKKEEPING = ("row_id", "content_hash")


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
        ValueError: ``out`` is not valid UTF-8 (pyarrow could not write there).
    """
    out = Path(os.path.abspath(Path(out).expanduser()))
    if not is_utf8(str(out)):
        raise ValueError(f"OUT path is not valid UTF-8: {shown_path(str(out))}; choose another name")
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


def add_output_arguments(parser: Any) -> None:
    """The options every preparation script takes about its output: ``--dedup``, ``--overwrite``, ``--num-cpus``,
    ``--verbose``."""
    parser.add_argument(
        "--dedup",
        choices=DEDUP_MODES,
        default="split",
        help="files of the same contents: keep a content found in train and val in train only (split), keep one "
        "copy overall (drop), or keep all and only list them (keep)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a prepared dataset already in OUT")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    parser.add_argument("--verbose", action="store_true", help="print Ray's own lines too (or FOVEA_VERBOSE=1)")


# what a preparation script stopped by Ctrl-C or SIGTERM leaves (fovea.jobs.run_stoppable): the output folder is
# moved into place only at the end, and the temporary folder beside it is removed on the way out
STOPPED_PREPARATION = "OUT was not written (its temporary folder is removed): rerun the command"


@contextmanager
def script_console(verbose: bool) -> Iterator[None]:
    """A preparation script's output (:mod:`fovea.console`): fovea's lines and a progress line; Ray's lines only
    with ``--verbose`` (``verbose``) or ``FOVEA_VERBOSE=1``."""
    from fovea.console import VERBOSE_ENV, install_console, remove_console, verbose_wanted

    before = os.environ.get(VERBOSE_ENV)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # read where Ray starts (fovea.data.prepare.run_preparation)
    install_console(verbose_wanted())
    try:
        yield
    finally:
        remove_console()
        if before is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = before


def check_dedup(dedup: str) -> None:
    """Check a ``dedup`` mode (see :func:`find_duplicate_contents`) before any work starts.

    Raises:
        ValueError: it is not one of :data:`DEDUP_MODES`.
    """
    if dedup not in DEDUP_MODES:
        raise ValueError(f"dedup must be one of {', '.join(DEDUP_MODES)}, got {dedup!r}")


def find_duplicate_contents(
    rows: Mapping[str, Sequence[Any]], *, dedup: str, segments: Sequence[tuple[Any, Any]] | None = None
) -> tuple[set[int], list[dict]]:
    """Which good checked rows hold the same bytes as another, and which of them to drop.

    Rows with the same ``content_hash`` (and, for video segments, the same ``start``/``end``) are copies of one
    content. Their first copy, by split (train first) then path, is the one kept; the others are listed, and dropped
    as ``dedup`` says:

    - ``split`` (default): a content in train and val is kept in train only (its val copies are dropped, so
      validation never scores images seen in training); copies within one split are kept and listed;
    - ``drop``: every copy but the first is dropped, whatever its split;
    - ``keep``: nothing is dropped; the copies are only listed.

    Args:
        rows: Columns ``row_id`` (index into ``segments``), ``path``, ``class_name``, ``split``, ``error`` and
            ``content_hash`` (hex SHA-256 of the file's bytes; ``""`` for rejected rows). Without ``content_hash``
            (a check function that does not hash) nothing is a duplicate.
        dedup: One of :data:`DEDUP_MODES`.
        segments: ``(start, end)`` of each item, for videos cut into segments; None when items are whole files.

    Returns:
        ``(dropped, duplicates)``: the ``row_id`` of every dropped row, and one entry per copy after the first:
        ``{"path", "kept", "dropped", "reason", "content_hash"}``, plus ``kept_class`` when the kept copy is
        labelled differently (a labelling conflict the data itself shows).
    """
    check_dedup(dedup)
    hashes = rows.get("content_hash")
    if hashes is None:
        return set(), []
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, (row_id, content, error) in enumerate(zip(rows["row_id"], hashes, rows["error"], strict=True)):
        if content and not error:
            segment = segments[row_id] if segments is not None else (None, None)
            groups.setdefault((content, *segment), []).append(index)
    path, split, class_name = rows["path"], rows["split"], rows["class_name"]
    dropped: set[int] = set()
    duplicates = []
    for (content, *_), members in groups.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda index: (SPLIT_RANK[split[index]], path[index], rows["row_id"][index]))
        first = members[0]
        for index in members[1:]:
            across = split[index] != split[first]
            drop = dedup == "drop" or (dedup == "split" and across)
            reason = (SAME_CONTENTS_ACROSS if across else SAME_CONTENTS)[dedup]
            entry = {"path": path[index], "kept": path[first], "dropped": drop, "reason": reason}
            entry["content_hash"] = content
            if class_name[index] != class_name[first]:
                entry["kept_class"] = class_name[first]
            duplicates.append(entry)
            if drop:
                dropped.add(int(rows["row_id"][index]))
    duplicates.sort(key=lambda entry: entry["path"])
    return dropped, duplicates


def check_and_number(batch: pa.Table, *, check: Callable[..., pa.Table], check_kwargs: dict[str, Any]) -> pa.Table:
    """Run a check function on a batch and keep each row's ``row_id`` (its index in the item list) beside it."""
    table = check(batch, **check_kwargs)
    if table.num_rows != batch.num_rows:
        raise RuntimeError(f"{check.__name__} returned {table.num_rows} rows for {batch.num_rows} items")
    return table.append_column("row_id", batch.column("row_id").cast(pa.int64()))


def rows_to_write(batch: pa.Table, *, split: str, dropped: Sequence[int]) -> pa.Table:
    """The good rows of one split that dedup keeps, with the stored columns only."""
    if dropped:
        batch = batch.filter(pc.invert(pc.is_in(batch["row_id"], value_set=pa.array(dropped, pa.int64()))))
    kept = kept_rows_of_split(batch, split=split)
    return kept.drop_columns([name for name in _BOOKKEEPING if name in kept.column_names])


def block_bookkeeping(block: pa.Table) -> pa.Table:
    """The small bookkeeping columns of one checked block (run as a task where the block is, so the image or
    video bytes never travel to the driver)."""
    optional = [name for name in ("note", "content_hash") if name in block.column_names]
    return block.select(["row_id", "path", "class_name", "split", "error", *optional])


class CheckProgress:
    """Files checked and rejected so far, counted on the driver as the checked blocks come back, drawn by the job's
    progress renderer (:mod:`fovea.console`: a live line in a terminal, a plain line now and then otherwise; none
    without a console), then one summary line."""

    def __init__(self, total: int, kind: str, renderer: Any = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.kind, self.renderer, self.clock = total, kind, renderer, clock
        self.checked = self.rejected = 0
        self.started = clock()

    def add(self, part: pa.Table) -> None:
        """Count one block's bookkeeping rows (:func:`block_bookkeeping`) and redraw the line."""
        self.checked += part.num_rows
        self.rejected += sum(1 for error in part.column("error").to_pylist() if error)
        if self.renderer is not None:
            self.renderer.show(self.info())

    def info(self) -> dict[str, Any]:
        """The progress record (see :func:`fovea.console.progress_text`)."""
        info = {
            "prefix": "checking ",
            "step": self.checked,
            "steps": self.total,
            "what": f"{self.kind} files",
            "elapsed_s": self.clock() - self.started,
            "unit": "files",
            "note": f"{self.rejected} rejected",
        }
        if self.checked:  # no rate before the first block is back
            info["samples"] = self.checked
        return info

    def summary(self) -> str:
        return (
            f"checked {self.checked} {self.kind} files in {self.clock() - self.started:.1f} s: {self.rejected} rejected"
        )


def check_streaming(checked: Any, progress: CheckProgress) -> tuple[Any, dict[str, list]]:
    """Run the check (a lazy Ray Data dataset) once, counting its blocks as they come back.

    Returns:
        The checked rows as a materialized dataset (the blocks already in the object store, not computed again)
        and their bookkeeping columns on the driver.
    """
    import ray

    # a task beside each block, on a worker the check already warmed up (a zero-CPU task would start new ones)
    bookkeeping = ray.remote(block_bookkeeping)
    refs, parts = [], []
    if progress.renderer is not None and progress.renderer.live:
        progress.renderer.show(progress.info())  # 0/N while Ray Data starts (a plain line waits for real counts)
    # iter_internal_ref_bundles (a Ray Data DeveloperAPI): each output block as it is done, once; materialize() would
    # hand them back only at the end
    for bundle in checked.iter_internal_ref_bundles():
        if any(piece is not None for piece in getattr(bundle, "slices", None) or ()):
            raise RuntimeError("Ray Data returned a slice of a checked block; cannot count the rows")
        block_refs = list(bundle.block_refs)
        refs.extend(block_refs)
        for part in ray.get([bookkeeping.remote(ref) for ref in block_refs]):
            parts.append(part)
            progress.add(part)
    rows = pa.concat_tables(parts).to_pydict()
    if len(rows["row_id"]) != progress.total or len(set(rows["row_id"])) != progress.total:
        raise RuntimeError(f"the check returned {len(rows['row_id'])} rows for {progress.total} items")
    return ray.data.from_arrow_refs(refs), rows


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
    dedup: str = "split",
    renderer: Any = None,
) -> dict[str, Any]:
    """Run the Ray Data job that checks every item and writes each split's shards under ``temp_dir``.

    Rows with the same contents are found from the check's ``content_hash`` column and dropped as ``dedup`` says
    (:func:`find_duplicate_contents`). The files checked and rejected so far are drawn by ``renderer`` (a
    :class:`fovea.console.ProgressRenderer`; None: no progress line) as the checked blocks come back
    (:func:`check_streaming`), then a summary line is printed.

    Returns:
        The manifest, without ``source`` and ``options``.
    """
    import ray

    check_dedup(dedup)
    # Shuffle before Ray sees the list: the input is sorted by class, and blocks (hence shards) would otherwise
    # each hold one or two classes, which makes file-level shuffling at training time far weaker.
    order = np.random.default_rng(seed).permutation(len(items))
    shuffled = [{**items[index], "row_id": int(index)} for index in order]
    lazy = ray.data.from_items(shuffled).map_batches(
        check_and_number,
        batch_format="pyarrow",
        batch_size=check_batch_size,
        fn_kwargs={"check": check, "check_kwargs": check_kwargs},
    )
    progress = CheckProgress(len(items), kind, renderer)
    checked, rows = check_streaming(lazy, progress)
    if renderer is not None:
        renderer.clear()
    print(progress.summary(), flush=True)
    segments = [(item.get("start"), item.get("end")) for item in items]
    dropped, duplicates = find_duplicate_contents(rows, dedup=dedup, segments=segments)
    has_notes = "note" in rows
    # good: checked fine and not dropped as a copy (a dropped row is listed in duplicates, not in notes or counts)
    good = [not error and row_id not in dropped for error, row_id in zip(rows["error"], rows["row_id"], strict=True)]
    rejected = sorted(
        ({"path": path, "reason": error} for path, error in zip(rows["path"], rows["error"], strict=True) if error),
        key=lambda entry: entry["path"],
    )
    notes = sorted(
        (
            {"path": path, "note": note}
            for path, note, ok in zip(rows["path"], rows.get("note") or [""] * len(good), good, strict=True)
            if note and ok
        ),
        key=lambda entry: entry["path"],
    )
    counts = Counter(
        (split, class_name) for split, class_name, ok in zip(rows["split"], rows["class_name"], good, strict=True) if ok
    )

    splits = {}
    for split in SPLITS:
        class_counts = {name: counts[(split, name)] for name in classes}
        count = sum(class_counts.values())
        shards = []
        if count:
            split_dir = temp_dir / split
            kept = checked.map_batches(
                rows_to_write,
                batch_format="pyarrow",
                batch_size=None,
                fn_kwargs={"split": split, "dropped": sorted(dropped)},
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
        "duplicates": duplicates,
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
