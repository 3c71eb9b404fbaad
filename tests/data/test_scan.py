"""Scanning a source as users have it: links, loops, FIFOs, odd names, duplicates; every entry accounted for.

Plain functions, no Ray: the scan (``survey_source``), the duplicate-contents rule and the manifest's summary.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from fovea.data.manifest import accounting, describe_manifest, summary_lines
from fovea.data.scan import HIDDEN, LISTED_TWICE, SAME_FILE, SAME_FOLDER, scan_source, survey_source
from fovea.data.write import (
    SAME_CONTENTS_ACROSS,
    check_and_number,
    check_output_dir,
    find_duplicate_contents,
    rows_to_write,
)

LATIN1 = os.fsdecode(b"caf\xe9")  # a name in Latin-1 bytes: lone surrogates once Python decodes it


def _file(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _messy_tree(root: Path) -> Path:
    """Two classes with every kind of odd entry the scan must account for."""
    for name in ("cat/a.jpg", "cat/sub/b.jpg", "dog/c.jpg", "dog/d.jpg"):
        _file(root / name, name.encode())
    _file(root / "cat" / f"{LATIN1}.jpg")  # a non-UTF-8 file name
    _file(root / f"{LATIN1}-folder" / "e.jpg")  # a non-UTF-8 class folder
    _file(root / "cat" / ".DS_Store")
    _file(root / "README.txt")  # outside the class folders
    (root / "owl").mkdir()  # an empty class folder
    (root / "cat" / "gone.jpg").symlink_to("nowhere.jpg")
    (root / "dog" / "gone.mp4").symlink_to(root / "missing" / "clip.mp4")
    (root / "dog" / "loop1").symlink_to("loop2")
    (root / "dog" / "loop2").symlink_to("loop1")
    (root / "dog" / "self").symlink_to("self")
    (root / "cat" / "sub" / "up").symlink_to("../..")  # a folder loop back to SRC
    (root / "cat" / "alias.jpg").symlink_to("a.jpg")  # the same real file twice in one class
    os.link(root / "dog" / "c.jpg", root / "dog" / "hard.jpg")  # a hard link: the same file too
    os.mkfifo(root / "dog" / "pipe.jpg")
    return root


def _reasons(entries: list[dict]) -> dict[str, str]:
    return {entry["path"]: entry["reason"] for entry in entries}


def test_every_odd_entry_is_rejected_ignored_or_deduplicated_with_a_reason(tmp_path: Path) -> None:
    root = _messy_tree(tmp_path / "src")
    scan = survey_source(root, val_fraction=0.0)  # returns at once: the FIFO is never opened

    assert scan.classes == ["cat", "dog"]
    assert sorted(Path(item["path"]).relative_to(root).as_posix() for item in scan.items) == [
        "cat/a.jpg",
        "cat/sub/b.jpg",
        "dog/c.jpg",
        "dog/d.jpg",
    ]
    rejected = _reasons(scan.rejected)
    assert rejected == {
        f"{root}/cat/caf\\xe9.jpg": "name is not valid UTF-8: rename the file or folder",
        f"{root}/caf\\xe9-folder/e.jpg": "name is not valid UTF-8: rename the file or folder",
        f"{root}/cat/gone.jpg": "dangling symbolic link: its target nowhere.jpg does not exist",
        f"{root}/dog/gone.mp4": f"dangling symbolic link: its target {root}/missing/clip.mp4 does not exist",
        f"{root}/dog/loop1": "symbolic link loop: too many levels of symbolic links",
        f"{root}/dog/loop2": "symbolic link loop: too many levels of symbolic links",
        f"{root}/dog/self": "symbolic link loop: too many levels of symbolic links",
        f"{root}/cat/sub/up": f"symbolic link loop: leads back to {os.path.realpath(root)}, a folder above it",
        f"{root}/dog/pipe.jpg": "not a regular file (FIFO)",
    }
    assert _reasons(scan.ignored) == {
        f"{root}/cat/.DS_Store": HIDDEN,
        f"{root}/README.txt": "not in a class folder",
        f"{root}/owl": "empty class folder: no files, so no class",
    }
    assert scan.duplicates == [
        {"path": f"{root}/cat/alias.jpg", "kept": f"{root}/cat/a.jpg", "dropped": True, "reason": SAME_FILE},
        {"path": f"{root}/dog/hard.jpg", "kept": f"{root}/dog/c.jpg", "dropped": True, "reason": SAME_FILE},
    ]
    # Everything the scan reports can go into JSON (and so into pyarrow and the manifest) as UTF-8.
    json.dumps([scan.items, scan.rejected, scan.ignored, scan.duplicates], ensure_ascii=False).encode("utf-8")

    # Every entry of every folder walked is in exactly one list.
    walked = {f"{root}/{name}" for name in os.listdir(root)} | {
        os.path.join(folder, name)
        for folder in (root / "cat", root / "cat" / "sub", root / "dog")
        for name in os.listdir(folder)
    }
    walked = {os.fsencode(path).decode("utf-8", "backslashreplace") for path in walked}
    walked -= {f"{root}/{name}" for name in ("cat", "dog", "caf\\xe9-folder")} | {f"{root}/cat/sub"}
    listed = [item["path"] for item in scan.items] + [
        entry["path"] for entries in (scan.rejected, scan.ignored, scan.duplicates) for entry in entries
    ]
    assert sorted(listed) == sorted(walked | {f"{root}/caf\\xe9-folder/e.jpg"})


def test_a_linked_folder_loop_is_walked_once(tmp_path: Path) -> None:
    """The issue's case: a link to SRC inside a class turned 61 files into 921; now they stay 61."""
    root = tmp_path / "src"
    for index in range(61):
        _file(root / ("ab"[index % 2]) / f"{index:02d}.jpg")
    (root / "a" / "again").symlink_to(root)
    (root / "b" / "mirror").symlink_to(root / "b")
    scan = survey_source(root)
    assert len(scan.items) == 61
    real = os.path.realpath(root)
    assert _reasons(scan.rejected) == {
        f"{root}/a/again": f"symbolic link loop: leads back to {real}, a folder above it",
        f"{root}/b/mirror": f"symbolic link loop: leads back to {real}/b, a folder above it",
    }


def test_links_between_classes_and_splits(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for name in ("train/cat/1.jpg", "train/cat/2.jpg", "train/dog/3.jpg", "train/dog/4.jpg", "val/cat/5.jpg"):
        _file(root / name, name.encode())
    (root / "val" / "cat" / "1.jpg").symlink_to(root / "train" / "cat" / "1.jpg")  # would leak into val
    (root / "val" / "dog").mkdir()
    (root / "val" / "dog" / "2.jpg").symlink_to(root / "train" / "cat" / "2.jpg")  # another class: a conflict
    (root / "train" / "dog" / "shared").symlink_to(root / "train" / "dog")  # a loop
    _file(root / "test" / "cat" / "9.jpg")
    scan = survey_source(root)

    split_of = {Path(item["path"]).relative_to(root).as_posix(): item["split"] for item in scan.items}
    assert split_of == {"train/cat/1.jpg": "train", "train/dog/3.jpg": "train", "train/dog/4.jpg": "train"} | {
        "val/cat/5.jpg": "val"
    }
    assert scan.duplicates == [
        {"path": f"{root}/val/cat/1.jpg", "kept": f"{root}/train/cat/1.jpg", "dropped": True, "reason": SAME_FILE}
    ]
    rejected = _reasons(scan.rejected)
    assert rejected[f"{root}/val/dog/2.jpg"] == (
        f"labelling conflict: the same file is also {root}/train/cat/2.jpg, under class 'cat'"
    )
    assert rejected[f"{root}/train/cat/2.jpg"] == (
        f"labelling conflict: the same file is also {root}/val/dog/2.jpg, under class 'dog'"
    )
    assert rejected[f"{root}/train/dog/shared"].startswith("symbolic link loop: leads back to")
    assert _reasons(scan.ignored) == {
        f"{root}/test": "not a split folder: only train/ and val/ (or validation/) are read"
    }


def test_a_folder_linked_twice_into_one_class_is_walked_once_and_into_another_is_a_conflict(tmp_path: Path) -> None:
    root = tmp_path / "src"
    _file(root / "cat" / "real" / "1.jpg")
    _file(root / "dog" / "2.jpg")
    (root / "cat" / "zlink").symlink_to(root / "cat" / "real")
    scan = survey_source(root)
    assert [Path(item["path"]).name for item in scan.items] == ["1.jpg", "2.jpg"]
    assert scan.duplicates == [
        {"path": f"{root}/cat/zlink", "kept": f"{root}/cat/real", "dropped": True, "reason": SAME_FOLDER}
    ]
    (root / "dog" / "cats").symlink_to(root / "cat")  # every cat file now also has the label dog
    scan = survey_source(root)
    assert [Path(item["path"]).name for item in scan.items] == ["2.jpg"]
    conflict = "labelling conflict: the same file is also {}, under class {!r}"
    assert _reasons(scan.rejected) == {
        f"{root}/cat/real/1.jpg": conflict.format(f"{root}/dog/cats/real/1.jpg", "dog"),
        f"{root}/dog/cats/real/1.jpg": conflict.format(f"{root}/cat/real/1.jpg", "cat"),
    }


def test_unreadable_folders_and_sources_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root, where chmod does not deny reading: the scan's listing is made to fail instead."""
    root = tmp_path / "src"
    _file(root / "cat" / "1.jpg")
    _file(root / "cat" / "locked" / "2.jpg")
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path).endswith("locked") or os.environ.get("DENY_ALL"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = survey_source(root)
    assert len(scan.items) == 1
    assert scan.rejected == [{"path": f"{root}/cat/locked", "reason": "unreadable folder: permission denied"}]
    monkeypatch.setenv("DENY_ALL", "1")
    with pytest.raises(ValueError, match=r"^cannot read SRC .*: permission denied$"):
        survey_source(root)


def test_nothing_usable_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "gone.jpg").symlink_to("nowhere.jpg")
    with pytest.raises(ValueError) as caught:
        survey_source(root)
    assert str(caught.value) == (
        f"no usable files in {root}: 1 rejected, e.g. {root}/cat/gone.jpg: "
        "dangling symbolic link: its target nowhere.jpg does not exist"
    )
    with pytest.raises(ValueError, match="OUT path is not valid UTF-8: .*caf\\\\xe9"):
        check_output_dir(tmp_path / LATIN1)


def test_lists_name_fifos_missing_files_folders_and_repeats(tmp_path: Path) -> None:
    _file(tmp_path / "a.jpg")
    _file(tmp_path / "b.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "dir").mkdir()
    listing = tmp_path / "list.csv"
    listing.write_text(
        "path,label\na.jpg,x\na.jpg,x\nb.jpg,y\npipe.jpg,x\nmissing.jpg,y\ndir,y\n.hidden.jpg,y\ns3://b/k.jpg,x\n"
    )
    _file(tmp_path / ".hidden.jpg")  # named in a list: used, hidden or not
    scan = survey_source(listing, val_fraction=0.0)
    assert sorted(item["path"] for item in scan.items) == [
        f"{tmp_path}/.hidden.jpg",
        f"{tmp_path}/a.jpg",
        f"{tmp_path}/b.jpg",
        "s3://b/k.jpg",
    ]
    assert _reasons(scan.rejected) == {
        f"{tmp_path}/pipe.jpg": "not a regular file (FIFO)",
        f"{tmp_path}/missing.jpg": "unreadable file: no such file or directory",
        f"{tmp_path}/dir": "a folder, not a file",
    }
    assert scan.duplicates == [
        {"path": f"{tmp_path}/a.jpg", "kept": f"{tmp_path}/a.jpg", "dropped": True, "reason": LISTED_TWICE}
    ]

    # a JSON list may hold names no file system gave: lone surrogates are rejected, escaped, not a crash
    (tmp_path / "list.json").write_text('[{"path": "a.jpg", "label": "x"}, {"path": "\\ud800.jpg", "label": "x"}]')
    scan = survey_source(tmp_path / "list.json")
    assert [entry["path"] for entry in scan.rejected] == [f"{tmp_path}/\\ud800.jpg"]
    (tmp_path / "latin1.csv").write_bytes(b"path,label\ncaf\xe9.jpg,x\n")
    with pytest.raises(ValueError, match=r"latin1.csv is not UTF-8 text: invalid continuation byte at byte \d+$"):
        scan_source(tmp_path / "latin1.csv")


def _checked_rows(*rows: tuple[str, str, str, str]) -> dict[str, list]:
    """Checked-row bookkeeping columns from ``(path, class, split, content_hash)`` tuples."""
    return {
        "row_id": list(range(len(rows))),
        "path": [row[0] for row in rows],
        "class_name": [row[1] for row in rows],
        "split": [row[2] for row in rows],
        "error": ["" if row[3] else "empty file" for row in rows],
        "content_hash": [row[3] for row in rows],
    }


ROWS = _checked_rows(
    ("/t/cat/1.jpg", "cat", "train", "aa"),
    ("/v/cat/1.jpg", "cat", "val", "aa"),  # the case: a val image byte-identical to a train one
    ("/v/dog/1.jpg", "dog", "val", "aa"),
    ("/t/cat/2.jpg", "cat", "train", "bb"),
    ("/t/cat/3.jpg", "cat", "train", "bb"),  # a copy within train
    ("/v/cat/4.jpg", "cat", "val", "cc"),
    ("/t/cat/bad.jpg", "cat", "train", ""),  # rejected rows are never duplicates
    ("/t/cat/bad2.jpg", "cat", "train", ""),
)


def test_duplicate_contents_by_dedup_mode() -> None:
    dropped, duplicates = find_duplicate_contents(ROWS, dedup="split")
    assert dropped == {1, 2}
    assert [(entry["path"], entry["kept"], entry["dropped"]) for entry in duplicates] == [
        ("/t/cat/3.jpg", "/t/cat/2.jpg", False),
        ("/v/cat/1.jpg", "/t/cat/1.jpg", True),
        ("/v/dog/1.jpg", "/t/cat/1.jpg", True),
    ]
    assert duplicates[1]["reason"] == "same contents in train and val: kept in train only (--dedup=split)"
    assert duplicates[1]["content_hash"] == "aa" and "kept_class" not in duplicates[1]
    assert duplicates[2]["kept_class"] == "cat"  # the copy under dog: a labelling conflict, shown
    assert find_duplicate_contents(ROWS, dedup="drop")[0] == {1, 2, 4}
    dropped, duplicates = find_duplicate_contents(ROWS, dedup="keep")
    assert dropped == set() and len(duplicates) == 3
    without_hashes = {key: value for key, value in ROWS.items() if key != "content_hash"}  # an older check function
    assert find_duplicate_contents(without_hashes, dedup="drop") == (set(), [])
    segments = [(0.0, 1.0), (1.0, 2.0), (0.0, 1.0)] + [(None, None)] * 5  # row 1 is another part of the file
    assert find_duplicate_contents(ROWS, dedup="split", segments=segments)[0] == {2}
    with pytest.raises(ValueError, match="dedup must be one of split, drop, keep, got 'all'"):
        find_duplicate_contents(ROWS, dedup="all")


def test_segments_of_one_file_are_not_duplicates_of_each_other() -> None:
    rows = _checked_rows(("/v.mp4", "a", "train", "aa"), ("/v.mp4", "a", "val", "aa"), ("/w.mp4", "a", "val", "aa"))
    dropped, duplicates = find_duplicate_contents(rows, dedup="split", segments=[(0, 2), (2, 4), (0, 2)])
    assert dropped == {2} and [entry["path"] for entry in duplicates] == ["/w.mp4"]


def test_rows_to_write_keep_the_stored_columns_of_kept_rows() -> None:
    def check(batch: pa.Table, *, tag: str) -> pa.Table:
        return pa.table(
            {
                "image": [tag.encode()] * batch.num_rows,
                "path": batch["path"],
                "split": batch["split"],
                "error": [""] * batch.num_rows,
                "content_hash": ["aa"] * batch.num_rows,
            }
        )

    items = pa.table({"path": ["a", "b", "c"], "split": ["train", "train", "val"], "row_id": [7, 8, 9]})
    checked = check_and_number(items, check=check, check_kwargs={"tag": "x"})
    assert checked["row_id"].to_pylist() == [7, 8, 9]
    written = rows_to_write(checked, split="train", dropped=[8])
    assert written.column_names == ["image", "path"] and written["path"].to_pylist() == ["a"]
    with pytest.raises(RuntimeError, match="returned 1 rows for 3 items"):
        check_and_number(items, check=lambda batch: batch.slice(0, 1), check_kwargs={})


def test_summary_lines_count_each_category() -> None:
    manifest = {
        "kind": "image",
        "classes": ["cat"],
        "splits": {"train": {"count": 8, "shards": []}, "val": {"count": 1, "shards": []}},
        "rejected": [
            {"path": "/a", "reason": "not an image: cannot identify image file"},
            {"path": "/b", "reason": "not an image: cannot identify image file"},
            {"path": "/c", "reason": "dangling symbolic link: its target x does not exist"},
        ],
        "ignored": [{"path": "/.d", "reason": HIDDEN}],
        "duplicates": [
            {"path": "/e", "kept": "/f", "dropped": True, "reason": SAME_FILE},
            {"path": "/g", "kept": "/h", "dropped": True, "reason": SAME_CONTENTS_ACROSS["split"]},
        ],
    }
    manifest["accounting"] = accounting(manifest)
    assert manifest["accounting"]["rejected"] == {"not an image": 2, "dangling symbolic link": 1}
    assert manifest["accounting"]["ignored"] == {"hidden": 1}
    assert summary_lines(manifest) == [
        "prepared 9 images: 8 train, 1 val",
        "rejected 3 files (2 not an image, 1 dangling symbolic link)",
        "ignored 1 entries (1 hidden)",
        f"deduplicated 1 paths to files or folders already listed (1 {SAME_FILE})",
        "warning: 1 files have the same contents as another file: 1 in train and val: kept in train only "
        "(--dedup=split)",
    ]
    assert "ignored: 1 (1 hidden; listed in manifest.json)" in describe_manifest(manifest)
