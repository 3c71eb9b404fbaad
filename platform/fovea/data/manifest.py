"""The ``manifest.json`` that describes a prepared dataset folder.

A prepared dataset is a folder of Parquet shards plus this manifest. The file stores shard paths relative to the
dataset folder so the folder can be moved or copied to another machine; :func:`load_manifest` hands them back
absolute so callers can pass them straight to ``ray.data.read_parquet``.

Image datasets look like::

    {"format": "fovea-dataset/1", "kind": "image", "classes": ["cat", "dog"],
     "splits": {"train": {"count": 900, "shards": ["train/part-00000.parquet"], "class_counts": {"cat": 450, ...}},
                "val": {...}},
     "rejected": [{"path": "/data/cat/broken.jpg", "reason": "empty file"}],
     "ignored": [{"path": "/data/cat/.DS_Store", "reason": "hidden: names starting with '.' are skipped"}],
     "duplicates": [{"path": "/data/val/cat/3.jpg", "kept": "/data/train/cat/9.jpg", "dropped": true,
                     "reason": "same contents in train and val: kept in train only (--dedup=split)", ...}],
     "accounting": {"prepared": 1000, "rejected": {"empty file": 1}, "ignored": {"hidden": 1}, ...},
     "source": "/data", "created": "2026-01-01T00:00:00+00:00", "options": {...}}

Every entry of the source is in exactly one place: a shard row (``splits``), ``rejected``, ``ignored``, or
``duplicates`` with ``dropped`` true (``kept`` names the path whose row holds it); ``accounting`` counts them.
(A duplicate with ``dropped`` false is a shard row too, listed as a copy of ``kept``.)
"""

from __future__ import annotations

import copy
import json
import os
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from fovea.errors import first_line

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fovea-dataset/1"

_PREPARE_HINT = "prepare the dataset first with pipelines/prepare_images.py"


def is_uri(path: str | Path) -> bool:
    """Whether ``path`` is a URI for one of pyarrow's filesystems (``s3://``, ``gs://``, ``hdfs://``, ...)."""
    return isinstance(path, str) and "://" in path


def dataset_location(path: str | Path) -> str | Path:
    """Where a dataset is, as every Ray worker must see it: a URI unchanged, a local path made absolute."""
    return path if is_uri(path) else Path(path).expanduser().resolve()


def location_label(path: str | Path) -> str:
    """A dataset location to record or print: a URI without its options (its query string may hold credentials)."""
    return _split_uri(path)[0] if is_uri(path) else str(path)


def _split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/ds?endpoint_override=...`` to ``("s3://bucket/ds", "?endpoint_override=...")``."""
    base, sep, query = uri.partition("?")
    return base.rstrip("/"), sep + query


def _join_uri(uri: str, name: str) -> str:
    """A file inside the folder ``uri``, keeping its options (the query string pyarrow reads them from)."""
    base, query = _split_uri(uri)
    return f"{base}/{name}{query}"


def manifest_path(path: str | Path) -> Path | str:
    """The manifest file for a dataset folder, or ``path`` itself when it already names a ``.json`` file.

    Args:
        path: A prepared dataset folder or its manifest file: a local path, or a URI pyarrow's filesystems read
            (``s3://bucket/prepared``; options such as ``?endpoint_override=host:9000&scheme=http`` for MinIO are
            kept for every file of the dataset).

    Returns:
        The path of the manifest file (it may not exist).
    """
    if is_uri(path):
        return path if _split_uri(path)[0].endswith(".json") else _join_uri(path, MANIFEST_NAME)
    path = Path(path).expanduser()
    if path.suffix == ".json" and not path.is_dir():
        return path
    return path / MANIFEST_NAME


def _read_bytes(file: Path | str) -> bytes:
    """The bytes of a local file or of a URI.

    Raises:
        FileNotFoundError: there is no such file.
    """
    if not is_uri(file):
        return Path(file).read_bytes()
    from fovea.data.video import read_bytes

    try:
        return read_bytes(file)
    except FileNotFoundError:
        folder = _split_uri(file)[0].removesuffix("/" + MANIFEST_NAME)
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {folder}: {_PREPARE_HINT}") from None


def manifest_hash(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a dataset's ``manifest.json`` (its classes, splits, shard lists and
    counts): two models with the same hash were trained and scored on the same data."""
    import hashlib

    return hashlib.sha256(_read_bytes(manifest_path(path))).hexdigest()[:16]


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check a dataset manifest.

    Args:
        path: A prepared dataset folder or its ``manifest.json``.

    Returns:
        The manifest, with the shard paths of every split made absolute.

    Raises:
        FileNotFoundError: There is no manifest at ``path``.
        ValueError: The manifest is not valid JSON or lacks ``classes`` / ``splits``.
    """
    file = manifest_path(path)
    if isinstance(file, str):  # a URI: the shards are read through the same filesystem, with the same options
        try:
            manifest = json.loads(_read_bytes(file).decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"malformed manifest {location_label(file)}: not valid JSON ({error})") from None
        except FileNotFoundError:
            raise
        except OSError as error:  # unreachable, no access: one line
            raise FileNotFoundError(f"cannot read {location_label(file)}: {first_line(error)}") from None
        _check(manifest, file)
        base, query = _split_uri(file)
        folder = base.rsplit("/", 1)[0] + query
        for split in manifest["splits"].values():
            split["shards"] = [_join_uri(folder, shard) for shard in split.get("shards", [])]
        return manifest
    if not file.is_file():
        where = Path(path).expanduser()
        if not where.exists():
            raise FileNotFoundError(f"dataset not found: {where} does not exist ({_PREPARE_HINT})")
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {where}: {_PREPARE_HINT}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"malformed manifest {file}: not valid JSON ({error})") from None
    _check(manifest, file)

    root = file.parent.absolute()
    for split in manifest["splits"].values():
        split["shards"] = [str(root / shard) for shard in split.get("shards", [])]
    return manifest


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as ``out_dir/manifest.json`` atomically.

    Readers either see the previous file or the complete new one, never a half-written file, because the JSON goes
    to a temporary file in the same folder first and is then renamed over the target. Absolute shard paths inside
    ``out_dir`` are stored relative to it, so a dict returned by :func:`load_manifest` can be written back.

    Args:
        out_dir: The dataset folder.
        manifest: The manifest to write; it is not modified.

    Returns:
        The path of the written manifest.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = copy.deepcopy(manifest)
    root = out_dir.absolute()
    for split in manifest.get("splits", {}).values():
        split["shards"] = [_relative_to(shard, root) for shard in split.get("shards", [])]

    target = out_dir / MANIFEST_NAME
    # A unique name in the same folder (os.replace is atomic only within one filesystem); opened with plain open()
    # rather than mkstemp so the file gets the usual umask permissions instead of 0600.
    temp = out_dir / f".{MANIFEST_NAME}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temp, "x", encoding="utf-8") as file:
            json.dump(manifest, file, indent=2, ensure_ascii=False)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def describe_manifest(manifest: dict[str, Any]) -> str:
    """A prepared dataset in a few lines: classes, each split's rows and shards, notes and rejected files."""
    unit = "videos" if manifest.get("kind") == "video" else "images"
    lines = [f"classes ({len(manifest['classes'])}): {', '.join(manifest['classes'])}"]
    for name, split in manifest["splits"].items():
        lines.append(f"{name}: {split['count']} {unit} in {len(split['shards'])} shard(s)")
    sections = (("notes", "kept with a note", "note"), ("rejected", "rejected", "reason"))
    for key, label, field in sections:
        if key not in manifest:
            continue
        lines.append(f"{label}: {len(manifest[key])}")
        lines.extend(f"  {entry['path']}: {entry[field]}" for entry in manifest[key])
    for key in ("ignored", "duplicates"):
        if manifest.get(key):
            kind = (lambda e: e["reason"]) if key == "duplicates" else (lambda e: reason_category(e["reason"]))
            counts = _count_by(manifest[key], kind)
            lines.append(f"{key}: {len(manifest[key])} ({_counted(counts)}; listed in {MANIFEST_NAME})")
    return "\n".join(lines)


def reason_category(reason: str) -> str:
    """The kind of a rejected or ignored entry: its reason up to the first ``": "`` or ``" ("``."""
    return re.split(r": | \(", reason, maxsplit=1)[0]


def _count_by(entries: list[dict[str, Any]], key: Any) -> dict[str, int]:
    """How many entries there are of each ``key(entry)``, most first."""
    counts = Counter(key(entry) for entry in entries)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in counts.items())


def accounting(manifest: dict[str, Any]) -> dict[str, Any]:
    """What became of every source entry, in numbers: the manifest's ``accounting``.

    ``prepared`` rows, ``rejected`` and ``ignored`` entries by kind of reason (:func:`reason_category`), and
    ``duplicates_dropped`` / ``duplicates_kept`` by reason; the lists themselves name every path.
    """
    duplicates = manifest.get("duplicates", [])
    return {
        "prepared": sum(split["count"] for split in manifest["splits"].values()),
        "rejected": _count_by(manifest.get("rejected", []), lambda entry: reason_category(entry["reason"])),
        "ignored": _count_by(manifest.get("ignored", []), lambda entry: reason_category(entry["reason"])),
        "duplicates_dropped": _count_by([e for e in duplicates if e.get("dropped")], lambda e: e["reason"]),
        "duplicates_kept": _count_by([e for e in duplicates if not e.get("dropped")], lambda e: e["reason"]),
    }


def summary_lines(manifest: dict[str, Any]) -> list[str]:
    """One line per thing that became of the source's entries, for the end of preparation.

    ``prepared 90 images: 81 train, 9 val``; ``rejected 5 files (3 not an image, 2 dangling symbolic link)``;
    ``ignored 2 entries (...)``; ``deduplicated 3 paths to files already listed (...)``; and one ``warning:`` line
    counting files whose contents another file holds too (``--dedup``).
    """
    counts = manifest.get("accounting") or accounting(manifest)
    unit = "videos" if manifest.get("kind") == "video" else "images"
    per_split = ", ".join(f"{split['count']} {name}" for name, split in manifest["splits"].items())
    lines = [f"prepared {counts['prepared']} {unit}: {per_split}"]
    for key, what in (("rejected", "files"), ("ignored", "entries")):
        if counts[key]:
            lines.append(f"{key} {sum(counts[key].values())} {what} ({_counted(counts[key])})")
    links, contents = {}, {}
    for key in ("duplicates_dropped", "duplicates_kept"):
        for reason, count in counts[key].items():
            if reason.startswith("same contents"):
                contents[reason.removeprefix("same contents").lstrip(": ")] = count
            else:
                links[reason] = count
    if links:
        lines.append(f"deduplicated {sum(links.values())} paths to files or folders already listed ({_counted(links)})")
    if contents:
        shown = "; ".join(f"{count} {reason}" for reason, count in contents.items())
        lines.append(f"warning: {sum(contents.values())} files have the same contents as another file: {shown}")
    return lines


def _relative_to(shard: str, root: Path) -> str:
    """``shard`` relative to ``root`` (POSIX separators) when it lies inside it, unchanged otherwise."""
    path = Path(shard)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _check(manifest: Any, file: Path | str) -> None:
    """Raise a one-line ``ValueError`` when ``manifest`` lacks the keys every reader relies on."""
    if not isinstance(manifest, dict):
        raise ValueError(f"malformed manifest {file}: expected a JSON object, got {type(manifest).__name__}")
    for key, kind in (("classes", list), ("splits", dict)):
        if key not in manifest:
            raise ValueError(f"malformed manifest {file}: missing '{key}'")
        if not isinstance(manifest[key], kind):
            raise ValueError(f"malformed manifest {file}: '{key}' must be a {kind.__name__}")
    for name, split in manifest["splits"].items():
        if not isinstance(split, dict) or not isinstance(split.get("shards", []), list):
            raise ValueError(f"malformed manifest {file}: split '{name}' must be an object with a 'shards' list")
    problem = _content_problem(manifest)
    if problem:
        raise ValueError(f"malformed manifest {location_label(str(file))}: {problem}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shard_problem(shard: Any) -> str | None:
    """Why ``shard`` is not a path inside the dataset folder (relative, no ``..``, no URI), else None."""
    if not isinstance(shard, str) or not shard or "\x00" in shard:
        return "is not a file name"
    if shard.startswith(("/", "\\")) or "://" in shard or ".." in shard.replace("\\", "/").split("/"):
        return "lies outside the dataset folder (shard paths are relative to it, without '..')"
    return None


def _content_problem(manifest: dict[str, Any]) -> str | None:
    """What a manifest holds that no preparation writes: classes that are not distinct names, counts that are not
    whole numbers of rows, shard paths outside the dataset folder or listed twice, an unknown kind; else None."""
    classes = manifest["classes"]
    if not classes:
        return "'classes' is empty"
    if not all(isinstance(name, str) and name for name in classes):
        return "'classes' must be names (non-empty text)"
    twice = sorted(name for name, count in Counter(classes).items() if count > 1)
    if twice:
        return f"'classes' lists {twice[0]!r} more than once"
    if manifest.get("kind", "image") not in ("image", "video"):
        return f"'kind' must be image or video, not {manifest['kind']!r}"
    seen: set[str] = set()
    for name, split in manifest["splits"].items():
        if not _is_count(split.get("count")):
            return f"split '{name}': 'count' must be a whole number of rows >= 0, not {split.get('count')!r}"
        class_counts = split.get("class_counts", {})
        if not isinstance(class_counts, dict) or not all(_is_count(c) for c in class_counts.values()):
            return f"split '{name}': 'class_counts' must map class names to whole numbers of rows >= 0"
        unknown = sorted(set(class_counts) - set(classes))
        if unknown:
            return f"split '{name}': 'class_counts' names {unknown[0]!r}, which is not in 'classes'"
        for shard in split.get("shards", []):
            problem = _shard_problem(shard)
            if problem:
                return f"split '{name}': shard {shard!r} {problem}"
            if shard in seen:
                return f"split '{name}': shard {shard!r} is listed twice"
            seen.add(shard)
    return None
