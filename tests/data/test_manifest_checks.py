"""``load_manifest`` refuses what no preparation writes, in one line naming the manifest: shard paths outside the
dataset folder, class lists that are empty or repeat a name, counts that are not whole numbers of rows (no Ray)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from fovea.data import load_manifest

GOOD = {
    "format": "fovea-dataset/1",
    "kind": "image",
    "classes": ["cat", "dog"],
    "splits": {
        "train": {"count": 3, "shards": ["train/part-00000.parquet"], "class_counts": {"cat": 2, "dog": 1}},
        "val": {"count": 1, "shards": ["val/part-00000.parquet"], "class_counts": {"cat": 1, "dog": 0}},
    },
}


def _write(folder: Path, manifest: dict, text: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(text if text is not None else json.dumps(manifest))
    return folder


def _with(change) -> dict:
    manifest = copy.deepcopy(GOOD)
    change(manifest)
    return manifest


def _train(key, value):
    return lambda m: m["splits"]["train"].__setitem__(key, value)


BAD = {
    "parent-folder": (_train("shards", ["../x.parquet"]), "lies outside the dataset folder"),
    "parent-inside": (_train("shards", ["train/../../x.parquet"]), "lies outside the dataset folder"),
    "backslash-parent": (_train("shards", ["..\\x.parquet"]), "lies outside the dataset folder"),
    "absolute": (_train("shards", ["/etc/passwd"]), "lies outside the dataset folder"),
    "other-bucket": (_train("shards", ["s3://other-bucket/x.parquet"]), "lies outside the dataset folder"),
    "empty-path": (_train("shards", [""]), "is not a file name"),
    "not-text": (_train("shards", [7]), "is not a file name"),
    "nul-byte": (_train("shards", ["train/a\x00.parquet"]), "is not a file name"),
    "twice-in-split": (_train("shards", ["train/a.parquet", "train/a.parquet"]), "listed twice"),
    "in-two-splits": (_train("shards", ["val/part-00000.parquet"]), "listed twice"),
    "no-classes": (lambda m: m.__setitem__("classes", []), "'classes' is empty"),
    "class-twice": (lambda m: m.__setitem__("classes", ["cat", "dog", "cat"]), "lists 'cat' more than once"),
    "class-not-text": (lambda m: m.__setitem__("classes", ["cat", 3]), "'classes' must be names"),
    "class-empty-name": (lambda m: m.__setitem__("classes", ["cat", ""]), "'classes' must be names"),
    "negative-count": (_train("count", -1), "'count' must be a whole number of rows >= 0, not -1"),
    "fractional-count": (_train("count", 2.5), "not 2.5"),
    "float-count": (_train("count", 3.0), "not 3.0"),
    "text-count": (_train("count", "3"), "not '3'"),
    "boolean-count": (_train("count", True), "not True"),
    "missing-count": (lambda m: m["splits"]["train"].pop("count"), "not None"),
    "negative-class-count": (_train("class_counts", {"cat": -2, "dog": 1}), "'class_counts' must map"),
    "unknown-class-count": (_train("class_counts", {"cat": 2, "cow": 1}), "names 'cow', which is not in 'classes'"),
    "unknown-kind": (lambda m: m.__setitem__("kind", "audio"), "'kind' must be image or video"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_manifest_no_preparation_writes_is_refused_in_one_line(tmp_path, case):
    change, expected = BAD[case]
    folder = _write(tmp_path / "ds", _with(change))
    with pytest.raises(ValueError) as caught:
        load_manifest(folder)
    message = str(caught.value)
    assert message.startswith(f"malformed manifest {folder / 'manifest.json'}: ") and "\n" not in message, message
    assert expected in message, message


@pytest.mark.parametrize("count", ["NaN", "Infinity", "-1", "1e3"])
def test_counts_json_cannot_hold_as_integers_are_refused(tmp_path, count):
    text = json.dumps(GOOD).replace('"count": 3', f'"count": {count}')
    folder = _write(tmp_path / "ds", {}, text=text)
    with pytest.raises(ValueError, match="'count' must be a whole number of rows"):
        load_manifest(folder)


def test_a_manifest_as_the_preparation_writes_it_loads(tmp_path):
    folder = _write(tmp_path / "ds", GOOD)
    manifest = load_manifest(folder)
    assert manifest["splits"]["train"]["shards"] == [str(folder / "train/part-00000.parquet")]
    assert manifest["classes"] == ["cat", "dog"] and manifest["splits"]["val"]["count"] == 1
    # nested folders, dots inside names, an empty split, no kind and no class_counts: all as written before
    other = _with(lambda m: m["splits"]["train"].update(shards=["train/a/part.v2..parquet"], count=0))
    del other["kind"], other["splits"]["val"]["class_counts"]
    assert load_manifest(_write(tmp_path / "other", other))["splits"]["train"]["count"] == 0


def test_the_pre_flight_check_names_data_path(tmp_path):
    from fovea.config import ConfigError, build_config
    from fovea.train.checks import check_before_start

    folder = _write(tmp_path / "ds", _with(_train("shards", ["../../elsewhere.parquet"])))
    with pytest.raises(ConfigError, match=r"^data.path: malformed manifest .*lies outside the dataset folder"):
        check_before_start(build_config([{"data": {"path": str(folder)}}]))
