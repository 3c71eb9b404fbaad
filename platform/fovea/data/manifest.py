"""The ``manifest.json`` that describes a prepared dataset folder.

A prepared dataset is a folder of Parquet shards plus this manifest. The file stores shard paths relative to the
dataset folder so the folder can be moved or copied to another machine; :func:`load_manifest` hands them back
absolute so callers can pass them straight to ``ray.data.read_parquet``.

Image datasets look like::

    {"format": "fovea-dataset/1", "kind": "image", "classes": ["cat", "dog"],
     "splits": {"train": {"count": 900, "shards": ["train/part-00000.parquet"], "class_counts": {"cat": 450, ...}},
                "val": {...}},
     "rejected": [{"path": "/data/cat/broken.jpg", "reason": "empty file"}],
     "source": "/data", "created": "2026-01-01T00:00:00+00:00", "options": {...}}
"""

from __future__ import annotations

import copy
import json
import os
import uuid
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
    return "\n".join(lines)


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
