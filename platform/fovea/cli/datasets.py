"""``fovea datasets ...``: find, list and show prepared datasets (folders holding a ``manifest.json``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fovea.cli.format import Column, CommandError, print_json, render_pairs, render_table

DATASET_SEARCH_DEPTH = 4


def find_dataset_dirs(root: Path, max_depth: int = DATASET_SEARCH_DEPTH) -> list[Path]:
    """Folders under ``root`` (``max_depth`` levels at most) that hold a ``manifest.json``; not searched inside."""
    found: list[Path] = []

    def visit(folder: Path, depth: int) -> None:
        if (folder / "manifest.json").is_file():
            found.append(folder)
            return
        if depth >= max_depth:
            return
        try:
            with os.scandir(folder) as entries:
                children = sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))
        except OSError:
            return
        for child in children:
            visit(child, depth + 1)

    visit(root, 0)
    return found


def dataset_summary(folder: Path) -> dict[str, Any]:
    """One prepared dataset in a few numbers (``error`` set when its manifest does not read)."""
    from fovea.data.manifest import load_manifest

    try:
        manifest = load_manifest(folder)
    except (OSError, ValueError) as err:
        return {"path": str(folder), "error": str(err)}
    return {
        "path": str(folder),
        "kind": manifest.get("kind", "image"),
        "classes": len(manifest["classes"]),
        "class_names": manifest["classes"],
        "splits": {name: split.get("count") for name, split in manifest["splits"].items()},
        "rejected": len(manifest.get("rejected", [])),
        "created": manifest.get("created"),
        "source": manifest.get("source"),
    }


def datasets_list(args: argparse.Namespace) -> int:
    """``fovea datasets list [--root DIR]``."""
    from fovea.paths import fovea_home

    root = Path(args.root).expanduser() if args.root else fovea_home() / "datasets"
    if args.root and not root.is_dir():
        raise CommandError(f"--root {args.root}: no such folder")
    rows = [dataset_summary(folder) for folder in find_dataset_dirs(root)] if root.is_dir() else []
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no prepared datasets under {root}")
        return 0

    def under_root(row: dict[str, Any]) -> str:
        path = Path(row["path"])
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    print(f"under {root}:")
    columns = [
        Column("path", under_root, width=64, keep_end=True),
        Column("kind", lambda row: row.get("kind") or "unreadable"),
        Column("classes", "classes", right=True),
        Column("splits", "splits", width=40),
        Column("rejected", "rejected", right=True),
    ]
    print(render_table(rows, columns))
    for row in rows:
        if "error" in row:
            print(f"unreadable: {row['error']}", file=sys.stderr)
    return 0


def datasets_show(args: argparse.Namespace) -> int:
    """``fovea datasets show PATH``."""
    from fovea.data.manifest import dataset_location, describe_manifest, load_manifest, manifest_hash

    try:
        manifest = load_manifest(args.path)
        digest = manifest_hash(args.path)
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from None
    path = str(dataset_location(args.path))
    if args.json:
        print_json({"path": path, "manifest_hash": digest, **manifest})
        return 0
    print(render_pairs([("path", path), ("kind", manifest.get("kind", "image")), ("manifest hash", digest)]))
    print(describe_manifest(manifest))
    return 0
