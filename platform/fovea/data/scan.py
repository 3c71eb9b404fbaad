"""Walking a raw dataset's source: the file list with each file's class and split, before anything is opened.

:func:`survey_source` reads a folder of class subfolders (optionally under ``train/`` and ``val/``) or a CSV/JSON
list, sorts the class names (by number when all are integers) and assigns a seeded, per-class validation split to
files whose split the source does not give. Every entry it meets is accounted for: a file to prepare, or one it
rejects (a dangling link, a link loop, a FIFO, a name that is not UTF-8, ...), ignores (hidden, outside the class
folders) or drops as a second path to a file already listed. :func:`scan_source` is its short form (items and
classes). Used by image and video preparation alike.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import stat
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

SPLITS = ("train", "val")
# Names accepted for a split, in folder layouts and in the ``split`` column of CSV/JSON lists.
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val"}
_LIST_SUFFIXES = (".csv", ".json")
# Which copy of a file or content is kept: train before val (a file in both must not leak into validation).
SPLIT_RANK = {"train": 0, None: 0, "val": 1}

# (start, end) seconds of a segment of a video; None where the list leaves it open
_Segment = tuple[float | None, float | None]
# Column names a list may use for a segment's bounds (ours, then the Kinetics annotation files').
_START_COLUMNS = ("start", "time_start")
_END_COLUMNS = ("end", "time_end")

HIDDEN = "hidden: names starting with '.' are skipped"
SAME_FILE = "same file (a symbolic or hard link to a file kept under another path)"
LISTED_TWICE = "same file, listed more than once"
SAME_FOLDER = "same folder (a symbolic link to a folder already scanned for this class and split)"
_NOT_UTF8 = "name is not valid UTF-8: rename the file or folder"


class _Entry(NamedTuple):
    """A file to prepare, as the scan found it."""

    path: str
    class_name: str
    split: str | None  # None when the source does not say
    start: float | None = None
    end: float | None = None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the real file; None for URIs
    via_link: bool = False  # reached through a symbolic link (the file or a folder above it)


class _Child(NamedTuple):
    """One entry of a folder: a ``folder`` or ``file`` to go on with, or one to ``skip`` with ``(list, reason)``."""

    path: str
    kind: str
    key: tuple[int, int] | None = None
    via_link: bool = False
    record: tuple[str, str] | None = None


@dataclass
class SourceScan:
    """What :func:`survey_source` found: the items to prepare and every entry it did not keep, with a reason.

    ``rejected`` and ``ignored`` hold ``{"path", "reason"}``; ``duplicates`` holds ``{"path", "kept", "dropped",
    "reason"}`` (a second path to a file or folder already listed, ``kept`` naming the path used). Paths that are
    not valid UTF-8 are shown with their odd bytes backslash-escaped (``caf\\xe9.jpg``).
    """

    items: list[dict]
    classes: list[str]
    rejected: list[dict] = field(default_factory=list)
    ignored: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)


def scan_source(
    src: str | Path, *, val_fraction: float = 0.1, seed: int = 0, segments: bool = False
) -> tuple[list[dict], list[str]]:
    """The items and classes of :func:`survey_source` (same arguments), without the entries it did not keep."""
    scan = survey_source(src, val_fraction=val_fraction, seed=seed, segments=segments)
    return scan.items, scan.classes


def survey_source(src: str | Path, *, val_fraction: float = 0.1, seed: int = 0, segments: bool = False) -> SourceScan:
    """List every file of a raw image or video dataset with its class and split, and account for the rest.

    SRC may be a folder of class subfolders (``SRC/<class>/...``); a folder whose ``train/`` and ``val/`` (or
    ``validation/``) each hold class subfolders (other folders and files next to them, e.g. ``test/``, are
    ignored; with ``train/`` alone the val split is carved out of it); or a CSV file with a header holding
    ``path,label[,split]``, or a JSON file holding a list of objects with those keys (relative paths are resolved
    against the list's folder; a path holding ``://`` is a URI and is kept as it is).

    Class folders are walked recursively, following symbolic links; files are not opened here (unusable contents
    become rejected rows later), only looked at with ``stat``, so a FIFO never blocks the scan:

    - hidden files and folders (names starting with ``.``) and files outside the class folders are *ignored*;
    - dangling links, link loops (a link to a folder above it), FIFOs, sockets and devices, unreadable folders and
      names that are not valid UTF-8 are *rejected*, each with a one-line reason;
    - one real file (same ``st_dev``/``st_ino``: a symbolic or hard link) reached by several paths is prepared
      once, under the path of its train copy, then a path without links, then the first by name; the others go to
      ``duplicates``. Reached under two classes, it is a labelling conflict: every path to it is rejected.

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
        A :class:`SourceScan`: items are dicts with ``path`` (absolute), ``class_name``, ``label`` and ``split``
        (``"train"`` or ``"val"``), sorted by split then path.

    Raises:
        FileNotFoundError: SRC does not exist.
        ValueError: SRC cannot be read, has no class subfolders or no usable files, a list lacks columns or names an
            unknown split, or an argument is out of range.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    root = Path(os.path.abspath(Path(src).expanduser()))
    if not root.exists():
        raise FileNotFoundError(f"SRC not found: {src}")
    if not is_utf8(str(root)):
        raise ValueError(f"SRC path is not valid UTF-8: {shown_path(str(root))}; rename it")

    survey = _Survey()
    if root.is_dir():
        survey.scan_folder(root)
    elif root.suffix.lower() in _LIST_SUFFIXES and root.is_file():
        survey.scan_list_file(root)
        if not segments and any((entry.start, entry.end) != (None, None) for entry in survey.entries):
            raise ValueError(f"{src} gives start/end times: segments are for videos (pipelines/prepare_videos.py)")
    else:
        raise ValueError(f"SRC must be a folder or a .csv/.json list, got {src}")
    entries = survey.one_per_file()
    if not entries:
        if not survey.rejected:
            raise ValueError(f"no files found in {src}")
        first = survey.rejected[0]
        raise ValueError(
            f"no usable files in {src}: {len(survey.rejected)} rejected, e.g. {first['path']}: {first['reason']}"
        )

    classes = _sort_class_names({entry.class_name for entry in entries})
    entries = _assign_val_split(entries, val_fraction=val_fraction, seed=seed)
    label_of = {name: label for label, name in enumerate(classes)}
    items = []
    for entry in entries:
        item = {"path": entry.path, "class_name": entry.class_name, "label": label_of[entry.class_name]}
        item["split"] = entry.split
        if segments:
            item.update(start=entry.start, end=entry.end)
        items.append(item)
    items.sort(key=lambda item: (SPLITS.index(item["split"]), item["path"], item.get("start") or 0.0))
    return SourceScan(
        items,
        classes,
        rejected=sorted(survey.rejected, key=lambda entry: entry["path"]),
        ignored=sorted(survey.ignored, key=lambda entry: entry["path"]),
        duplicates=sorted(survey.duplicates, key=lambda entry: entry["path"]),
    )


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (a file name of other bytes decodes to lone surrogates that do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_path(path: str) -> str:
    """``path`` fit for JSON and a terminal: bytes that are not UTF-8 backslash-escaped (``caf\\xe9.jpg``)."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # lone surrogates that did not come from a file name (e.g. a JSON list's "\ud800")
        return path.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _file_type(mode: int) -> str:
    """What a non-regular, non-folder file is, from its ``st_mode``."""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device")):
        if test(mode):
            return name
    return "block device" if stat.S_ISBLK(mode) else "unknown file type"


def _strerror(error: OSError) -> str:
    """An OS error's message in lower case without the path (``permission denied``)."""
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (error.strerror or str(error)).lower()


def _stat_failure(path: str, error: OSError) -> str:
    """The reason a path that ``stat`` refuses is rejected: a dangling link, a link loop, or unreadable."""
    if os.path.islink(path):
        if error.errno == errno.ELOOP:
            return "symbolic link loop: too many levels of symbolic links"
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            try:
                target = shown_path(os.readlink(path))
            except OSError:
                target = "?"
            return f"dangling symbolic link: its target {target} does not exist"
    return f"unreadable file: {_strerror(error)}"


def _look(path: str, above: frozenset[tuple[int, int]], *, skip_hidden: bool = True) -> _Child:
    """What ``path`` is, by ``stat`` alone (never opened); ``above`` holds the real folders it lies in."""
    name = os.path.basename(path)
    if skip_hidden and name.startswith("."):
        return _Child(path, "skip", record=("ignored", HIDDEN))
    try:
        via_link = os.path.islink(path)
        info = os.stat(path)
    except OSError as error:
        return _Child(path, "skip", record=("rejected", _stat_failure(path, error)))
    key = (info.st_dev, info.st_ino)
    if stat.S_ISDIR(info.st_mode):
        if key in above:
            target = shown_path(os.path.realpath(path))
            return _Child(
                path, "skip", record=("rejected", f"symbolic link loop: leads back to {target}, a folder above it")
            )
        return _Child(path, "folder", key, via_link)
    if stat.S_ISREG(info.st_mode):
        return _Child(path, "file", key, via_link)
    return _Child(path, "skip", record=("rejected", f"not a regular file ({_file_type(info.st_mode)})"))


def _children(folder: str, above: frozenset[tuple[int, int]]) -> list[_Child]:
    """Every entry of ``folder``, sorted by name.

    Raises:
        OSError: the folder cannot be listed.
    """
    with os.scandir(folder) as listing:
        names = sorted(entry.name for entry in listing)
    return [_look(os.path.join(folder, name), above) for name in names]


def _class_folders(children: Sequence[_Child]) -> list[_Child]:
    return [child for child in children if child.kind == "folder"]


class _Survey:
    """The entries found so far, and those rejected, ignored or dropped as duplicates."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.rejected: list[dict] = []
        self.ignored: list[dict] = []
        self.duplicates: list[dict] = []
        self._visited: dict[tuple[Any, ...], str] = {}  # (real folder, class, split) -> the path it was walked by

    def note(self, path: str, where: str, reason: str) -> None:
        """Record ``path`` in ``rejected`` or ``ignored``."""
        getattr(self, where).append({"path": shown_path(path), "reason": reason})

    def add_file(self, entry: _Entry) -> None:
        """Keep a file, unless its name (or its class) cannot be stored as UTF-8."""
        if not is_utf8(entry.path):
            self.note(entry.path, "rejected", _NOT_UTF8)
        elif not is_utf8(entry.class_name):
            self.note(entry.path, "rejected", f"label {shown_path(entry.class_name)} is not valid UTF-8")
        else:
            self.entries.append(entry)

    def scan_folder(self, root: Path) -> None:
        """Entries of a class-folder tree, with or without ``train/`` and ``val/`` on top."""
        info = root.stat()
        above = frozenset([(info.st_dev, info.st_ino)])
        try:
            top = _children(str(root), above)
        except OSError as error:
            raise ValueError(f"cannot read SRC {root}: {_strerror(error)}") from None
        # A folder counts as a split folder only when it holds class folders itself; otherwise it is a class named
        # e.g. "train" in a plain class-folder layout.
        split_dirs: dict[str, tuple[_Child, list[_Child]]] = {}
        for child in _class_folders(top):
            name = os.path.basename(child.path)
            if name in _SPLIT_ALIASES:
                try:
                    inside = _children(child.path, above | {child.key})
                except OSError:
                    continue  # walked as a class folder, and rejected there as unreadable
                if _class_folders(inside):
                    split_dirs[name] = (child, inside)
        if not split_dirs:
            self._scan_class_folders(root, top, split=None, above=above)
            return
        if "val" in split_dirs and "validation" in split_dirs:
            raise ValueError(f"{root} has both val/ and validation/: keep one")
        if "train" not in split_dirs:
            raise ValueError(f"{root} has a {next(iter(split_dirs))}/ folder but no train/ folder")
        used = {child.path for child, _ in split_dirs.values()}
        for child in top:
            if child.kind == "skip":
                self.note(child.path, *child.record)
            elif child.path not in used:
                what = "not a split folder" if child.kind == "folder" else "not in a split folder"
                self.note(child.path, "ignored", f"{what}: only train/ and val/ (or validation/) are read")
        # train/ alone: leave the split open so _assign_val_split carves val out of it.
        for name, (child, inside) in split_dirs.items():
            split = _SPLIT_ALIASES[name] if len(split_dirs) > 1 else None
            self._scan_class_folders(Path(child.path), inside, split=split, above=above | {child.key})

    def _scan_class_folders(
        self, folder: Path, children: list[_Child], *, split: str | None, above: frozenset[tuple[int, int]]
    ) -> None:
        """Entries of a ``folder/<class>/...`` tree; empty class folders contribute nothing (and so are no class)."""
        if not _class_folders(children):
            raise ValueError(
                f"{folder} has no class subfolders: expected {folder}/<class>/<image> "
                f"or {folder}/train/<class>/<image> and {folder}/val/<class>/<image>"
            )
        for child in children:
            if child.kind == "skip":
                self.note(child.path, *child.record)
            elif child.kind == "file":
                self.note(child.path, "ignored", "not in a class folder")
            else:
                self._walk_class(child, os.path.basename(child.path), split, above)

    def _walk_class(self, top: _Child, class_name: str, split: str | None, above: frozenset) -> None:
        """Every file below one class folder, following links, each real folder walked once per class and split."""
        found = len(self.entries) + len(self.rejected) + len(self.ignored) + len(self.duplicates)
        self._visited.setdefault((top.key, class_name, split), top.path)
        stack = [(top.path, above | {top.key}, top.via_link)]
        while stack:
            folder, folder_above, linked = stack.pop()
            try:
                children = _children(folder, folder_above)
            except OSError as error:
                self.note(folder, "rejected", f"unreadable folder: {_strerror(error)}")
                continue
            below = []
            for child in children:
                if child.kind == "skip":
                    self.note(child.path, *child.record)
                elif child.kind == "file":
                    self.add_file(
                        _Entry(child.path, class_name, split, None, None, child.key, linked or child.via_link)
                    )
                elif (seen := self._visited.setdefault((child.key, class_name, split), child.path)) != child.path:
                    self.duplicates.append(
                        {
                            "path": shown_path(child.path),
                            "kept": shown_path(seen),
                            "dropped": True,
                            "reason": SAME_FOLDER,
                        }
                    )
                else:
                    below.append((child.path, folder_above | {child.key}, linked or child.via_link))
            stack.extend(reversed(below))
        if found == len(self.entries) + len(self.rejected) + len(self.ignored) + len(self.duplicates):
            self.note(top.path, "ignored", "empty class folder: no files, so no class")

    def scan_list_file(self, file: Path) -> None:
        """Entries of a CSV or JSON list of ``{path, label[, split][, start, end]}`` records."""
        records, columns = _read_list_file(file)
        missing = [name for name in ("path", "label") if name not in columns]
        if missing and (records or file.suffix.lower() == ".csv"):
            raise ValueError(f"{file} lacks column(s) {', '.join(missing)}: expected path,label[,split]")
        has_split = "split" in columns
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
            start, end = _seconds(record, _START_COLUMNS, where), _seconds(record, _END_COLUMNS, where)
            if "://" in path:
                self.add_file(_Entry(path, str(label).strip(), split, start, end))
                continue
            full_path = os.path.abspath(os.path.join(file.parent, os.path.expanduser(path)))
            if not is_utf8(full_path):  # a JSON list's lone surrogates: no file system can even be asked
                self.add_file(_Entry(full_path, str(label).strip(), split, start, end))
                continue
            child = _look(full_path, frozenset(), skip_hidden=False)
            if child.kind == "file":
                self.add_file(_Entry(full_path, str(label).strip(), split, start, end, child.key, child.via_link))
            elif child.kind == "folder":
                self.note(full_path, "rejected", "a folder, not a file")
            else:
                self.note(full_path, *child.record)

    def one_per_file(self) -> list[_Entry]:
        """The entries with each real file (and segment) once; the other paths to it dropped or, when they give it
        another class, every path to it rejected as a labelling conflict."""
        groups: dict[tuple[Any, ...], list[_Entry]] = {}
        for entry in self.entries:
            groups.setdefault((entry.identity or entry.path, entry.start, entry.end), []).append(entry)
        kept = []
        for group in groups.values():
            group.sort(key=lambda entry: (SPLIT_RANK[entry.split], entry.via_link, entry.path))
            first = group[0]
            other_class = next((entry for entry in group if entry.class_name != first.class_name), None)
            if other_class is not None:
                for entry in group:
                    other = other_class if entry.class_name == first.class_name else first
                    reason = f"labelling conflict: the same file is also {other.path}, under class {other.class_name!r}"
                    self.note(entry.path, "rejected", reason)
                continue
            kept.append(first)
            for entry in group[1:]:
                reason = LISTED_TWICE if entry.path == first.path else SAME_FILE
                self.duplicates.append({"path": entry.path, "kept": first.path, "dropped": True, "reason": reason})
        return kept


def _read_list_file(file: Path) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The records of a CSV or JSON list and their column names."""
    try:
        if file.suffix.lower() == ".csv":
            with open(file, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                columns = [name.strip() for name in reader.fieldnames or []]
                reader.fieldnames = columns
                return list(reader), columns
        records = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{file} is not UTF-8 text: {error.reason} at byte {error.start}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise ValueError(f"{file} must hold a JSON list of objects with keys path, label[, split]")
    return records, sorted({key for record in records for key in record})


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
    for entry in entries:
        if entry.split is None:
            open_by_class.setdefault(entry.class_name, []).append(entry.path)
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
        entry if entry.split is not None else entry._replace(split="val" if entry.path in val_paths else "train")
        for entry in entries
    ]
