"""Walking a raw dataset's source: the file list with each file's class and split, before anything is opened.

:func:`scan_source` reads a folder of class subfolders (optionally under ``train/`` and ``val/``) or a CSV/JSON
list, sorts the class names (by number when all are integers) and assigns a seeded, per-class validation split to
files whose split the source does not give. Used by image and video preparation alike.
"""

from __future__ import annotations

import csv
import json
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val")
# Names accepted for a split, in folder layouts and in the ``split`` column of CSV/JSON lists.
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val"}
_LIST_SUFFIXES = (".csv", ".json")

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
