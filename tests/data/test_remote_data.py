"""A prepared dataset in S3 (``data.path=s3://...``, read through pyarrow's S3 filesystem) works like a local one.

The S3 API here is moto's server on 127.0.0.1; the endpoint travels in the URI's options
(``?endpoint_override=...&scheme=http``), as it would for MinIO or any S3-compatible store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import prepare_colour_set

from fovea.config import ConfigError, build_config
from fovea.data import build_image_datasets, load_manifest, manifest_hash
from fovea.train.checks import check_before_start
from fovea.train.trainer import dataset_dir_of, run_tags

MOTO = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free port, and the credentials in the environment (before Ray starts, so its workers
    have them too, as they would from an instance profile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    try:
        deadline = time.time() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.time() < deadline and server.poll() is None, "moto_server did not start"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def s3_dataset(s3_endpoint, ray_local, tmp_path_factory):
    """(a local prepared folder, the s3:// URI of its copy, with the endpoint options)."""
    import pyarrow.fs as fs

    local = prepare_colour_set(tmp_path_factory.mktemp("remote"), per_class=12, val_fraction=0.25, shard_rows=8)
    bucket = fs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1",
                             allow_bucket_creation=True)  # fmt: skip
    bucket.create_dir("fovea-data")
    fs.copy_files(str(local), "fovea-data/colours", destination_filesystem=bucket)
    return local, f"s3://fovea-data/colours?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"


def test_a_dataset_in_s3_streams_like_the_local_one(s3_dataset):
    from fovea.config import DataConfig

    local, uri = s3_dataset
    remote, here = load_manifest(uri), load_manifest(local)
    assert remote["classes"] == here["classes"] == ["blue", "green", "red"]
    assert manifest_hash(uri) == manifest_hash(local)  # the same bytes
    query = uri[uri.index("?") :]
    for split in ("train", "val"):
        shards = remote["splits"][split]["shards"]
        assert len(shards) == len(here["splits"][split]["shards"]) > 1
        assert all(s.startswith(f"s3://fovea-data/colours/{split}/") and s.endswith(query) for s in shards)
    datasets = build_image_datasets(remote, DataConfig(batch_size=8), img_size=32, seed=0)
    assert datasets["train"].count() == remote["splits"]["train"]["count"] == here["splits"]["train"]["count"]
    batch = next(iter(datasets["val"].iter_torch_batches(batch_size=4)))
    assert tuple(batch["image"].shape) == (4, 3, 32, 32) and batch["label"].max() < 3


def test_jobs_take_the_uri_and_record_it_without_its_options(s3_dataset):
    local, uri = s3_dataset
    cfg = build_config([{"model": {"name": "vit_micro_patch4_32"}, "data": {"path": uri, "batch_size": 8}}])
    check_before_start(cfg)  # the manifest is read from S3 before Ray starts
    assert dataset_dir_of(cfg) == uri  # not turned into a local path
    tags = run_tags(cfg, dataset_dir_of(cfg))
    assert tags["fovea.dataset"] == "s3://fovea-data/colours"  # options (endpoints, maybe secrets) stay out
    assert tags["fovea.manifest_hash"] == manifest_hash(local)
    missing = build_config([{"data": {"path": uri.replace("colours", "nothing-here")}}])
    message = r"^data\.path: no manifest\.json in s3://fovea-data/nothing-here: prepare"
    with pytest.raises(ConfigError, match=message) as err:
        check_before_start(missing)
    assert "\n" not in str(err.value)


def test_the_summary_names_a_checkpoint_in_s3_by_its_uri(s3_endpoint):
    import pyarrow.fs as fs
    from ray.train import Checkpoint

    from fovea.checkpoints import checkpoint_location

    bucket = fs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1")
    assert checkpoint_location(Checkpoint("runs/fovea/r1/checkpoint_0", filesystem=bucket)) == (
        "s3://runs/fovea/r1/checkpoint_0"
    )
    assert checkpoint_location(Checkpoint("/shared/runs/r1/checkpoint_0")) == "/shared/runs/r1/checkpoint_0"
