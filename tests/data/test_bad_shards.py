"""Shards that go bad after preparation: deleted, cut short, or damaged inside (the footer still reads).

Before a run every shard's footer is checked: a missing or unreadable one is dropped, named and counted (rows too)
within ``data.max_bad_shards`` per split, and the run stops with one line past it. Damage the footer check cannot see
is met while reading: each shard is its own read task, so Ray Data's errored-block budget (what is left of the same
``data.max_bad_shards``) skips exactly that shard's rows, every pass, and fails the pass past it (a run: one line).
A training run over bad shards is part of the end-to-end drill, ``tests/e2e/test_hardening_drill.py``."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import prepare_colour_set
from ray import cloudpickle
from ray.train import WorkerGroupError
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

from fovea.config import build_config
from fovea.data import load_manifest, read_split
from fovea.data.shards import (
    BadShardsError,
    check_shards,
    shard_read_problem,
    skipped_summary,
    skipped_warnings,
)
from fovea.jobs import RunFailure
from fovea.train.checks import data_failure
from fovea.train.trainer import checked_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory) -> Path:
    """A small prepared image set: 5 train shards of about 6 rows, 2 val shards."""
    return prepare_colour_set(tmp_path_factory.mktemp("bad_data"), per_class=12, val_fraction=0.25, shard_rows=6)


@pytest.fixture()
def dataset(prepared, tmp_path) -> Path:
    """This test's own copy, to damage."""
    return Path(shutil.copytree(prepared, tmp_path / "dataset"))


def _digests(rows) -> Counter:
    """The images of a table or a Ray Dataset's rows, by content."""
    images = rows.column("image").to_pylist() if hasattr(rows, "column") else [row["image"] for row in rows.iter_rows()]
    return Counter(hashlib.sha256(image).hexdigest() for image in images)


def _cut_short(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # the footer, at the end, is gone


def _damage_inside(path: str) -> None:
    """Overwrite the first page header (just after the leading magic bytes): the footer still reads, the data not."""
    data = bytearray(Path(path).read_bytes())
    data[4:68] = b"\xff" * 64
    Path(path).write_bytes(bytes(data))


def _train_shards(dataset: Path) -> tuple[dict, list[str], dict[str, Counter]]:
    manifest = load_manifest(dataset)
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) >= 4
    return manifest, shards, {shard: _digests(pq.read_table(shard, columns=["image"])) for shard in shards}


def test_deleted_and_cut_short_shards_are_dropped_before_the_run_and_counted(dataset):
    manifest, shards, rows = _train_shards(dataset)
    gone, cut = shards[1], shards[2]
    Path(gone).unlink()
    _cut_short(cut)

    checked = check_shards(manifest, max_bad_shards=2)
    train = checked["splits"]["train"]
    assert train["shards"] == [shard for shard in shards if shard not in (gone, cut)]
    assert [item["path"] for item in train["skipped_shards"]] == [gone, cut]
    assert train["skipped_shards"][0]["reason"] == "no such file"
    assert "footer" in train["skipped_shards"][1]["reason"]  # pyarrow's: "Parquet magic bytes not found in footer..."
    lost = sum(rows[gone].values()) + sum(rows[cut].values())
    assert train["skipped_rows"] == lost
    assert train["count"] == manifest["splits"]["train"]["count"] - lost
    assert checked["splits"]["val"] == manifest["splits"]["val"]  # nothing wrong there: left as it was
    assert manifest["splits"]["train"]["shards"] == shards  # the caller's manifest is not changed
    assert skipped_summary(checked) == (2, lost)
    [warning] = skipped_warnings(checked, 2)
    assert warning.startswith(f"warning: train split: skipping 2 missing or unreadable shard file(s), {lost} of ")
    assert gone in warning and cut in warning and "\n" not in warning

    healthy = sum((rows[shard] for shard in train["shards"]), Counter())
    for cache_max_mb in (0, 100):  # streamed from the files every epoch; read once and cached
        split = read_split(checked, "train", shuffle="files", cache_max_mb=cache_max_mb, max_bad_shards=2)
        assert _digests(split) == healthy, cache_max_mb


def test_more_bad_shards_than_the_budget_stop_the_run_in_one_line_naming_them(dataset):
    manifest, shards, _ = _train_shards(dataset)
    Path(shards[0]).unlink()
    _cut_short(shards[3])
    with pytest.raises(BadShardsError) as caught:
        check_shards(manifest, max_bad_shards=1)
    message = str(caught.value)
    assert message.startswith(f"train split: 2 of {len(shards)} shard files are missing or unreadable ")
    assert "data.max_bad_shards=1" in message and "\n" not in message
    assert f"{shards[0]} (no such file)" in message and shards[3] in message

    # what a job prints: the dataset, then the same line (exit code 1)
    cfg = build_config([{"job": "train_vit"}, {"data": {"path": str(dataset), "max_bad_shards": 1}}])
    with pytest.raises(RunFailure) as failed:
        checked_manifest(cfg, dataset)
    assert str(failed.value) == f"dataset {dataset}: {message}"

    # a split with no shard left cannot train, whatever the budget
    for shard in manifest["splits"]["val"]["shards"]:
        Path(shard).unlink()
    with pytest.raises(BadShardsError, match=r"^val split: 2 of 2 shard files .* \(none is left to train on\)"):
        check_shards(manifest, max_bad_shards=-1)


def test_a_shard_damaged_inside_is_skipped_every_pass_within_the_budget_and_fails_it_past(dataset):
    manifest, shards, rows = _train_shards(dataset)
    damaged = shards[0]
    _damage_inside(damaged)
    checked = check_shards(manifest, max_bad_shards=1)
    assert "skipped_shards" not in checked["splits"]["train"]  # its footer reads: the check cannot see it

    healthy = sum((rows[shard] for shard in shards[1:]), Counter())
    streamed = read_split(checked, "train", shuffle="files", cache_max_mb=0, max_bad_shards=1)
    assert [_digests(streamed), _digests(streamed)] == [healthy, healthy]  # two epochs, each skips it
    cached = read_split(checked, "train", shuffle="files", cache_max_mb=100, max_bad_shards=1)
    assert _digests(cached) == healthy

    problem = f"shard file {damaged} could not be read: "
    with pytest.raises(BadShardsError) as caught:  # a cached split is read here, on the driver
        read_split(checked, "train", cache_max_mb=100, max_bad_shards=0)
    message = str(caught.value)
    assert message.startswith(f"train split: {problem}") and "\n" not in message
    assert message.endswith("; more shard files failed than data.max_bad_shards=0 allows")
    streamed = read_split(checked, "train", cache_max_mb=0, max_bad_shards=0)
    with pytest.raises(Exception) as failed:  # a streamed one fails the pass (in a run: the worker reading it)
        _digests(streamed)
    found = shard_read_problem(failed.value)
    assert found.startswith(problem) and "\n" not in found

    # in a run, Ray Train hands the driver the worker's failure (serialized across by Ray): one line
    failures = {
        1: UserExceptionWithTraceback(RuntimeError("other"), "Traceback ..."),
        0: UserExceptionWithTraceback(failed.value, "Traceback ..."),
    }
    error = cloudpickle.loads(cloudpickle.dumps(WorkerGroupError("Traceback (most recent call last): ...", failures)))
    assert data_failure(error, 0) == f"worker 0: {found}; more shard files failed than data.max_bad_shards=0 allows"
    assert data_failure(WorkerGroupError("x", {0: UserExceptionWithTraceback(OSError("disk"), "tb")}), 0) is None
