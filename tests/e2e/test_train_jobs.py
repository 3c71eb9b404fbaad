"""The image path end to end on Ray: prepare -> stream -> TorchTrainer (1 and 2 workers) -> MLflow and registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from helpers import check_per_class_records, mlflow_store, prepare_colour_set, short_run, smoke_config
from mlflow.tracking import MlflowClient

from fovea.data import load_manifest
from fovea.train.trainer import run_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def user_dataset(ray_local, tmp_path_factory) -> Path:
    """A user's own ImageFolder (PNG and JPEG, any size and mode), prepared with the pipeline."""
    return prepare_colour_set(tmp_path_factory.mktemp("user_data"), per_class=48, val_fraction=0.25, shard_rows=32)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return mlflow_store(tmp_path_factory.mktemp("mlflow"))


def _config(dataset: Path, tracking_uri: str, storage: Path, **sections):
    run = short_run(dataset, tracking_uri, storage, "e2e")
    return smoke_config("train_vit", "vit", run, {"track": {"log_every_steps": 1}}, sections)


@pytest.fixture(scope="module")
def one_worker(user_dataset, tracking_uri, tmp_path_factory):
    """One training run on one worker, shared: the MLflow test reads it, the DDP test compares two workers to it."""
    storage = tmp_path_factory.mktemp("one_worker")
    return run_training(_config(user_dataset, tracking_uri, storage, train={"name": "e2e-one"}))


def test_user_folder_trains_and_lands_in_mlflow(user_dataset, tracking_uri, one_worker, tmp_path):
    manifest = load_manifest(user_dataset)
    assert manifest["classes"] == ["blue", "green", "red"]
    summary = one_worker
    assert summary.epochs == 3
    assert summary.val_top1 >= 90.0, summary

    client = MlflowClient(tracking_uri)
    run = client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "e2e-one"
    assert run.data.params["optim.lr"] == "0.002" and run.data.params["model.name"] == "vit_micro_convstem_32"
    assert run.data.tags["fovea.train_name"] == "e2e-one"
    val_top1 = client.get_metric_history(run.info.run_id, "val_top1")
    assert [m.step for m in val_top1] == [1, 2, 3]
    assert val_top1[-1].value == pytest.approx(summary.val_top1)
    steps = client.get_metric_history(run.info.run_id, "step/train_loss")
    assert len(steps) >= 3 * (manifest["splits"]["train"]["count"] // 16) - 1
    for key in ("train_loss", "val_loss", "val_top5", "samples_per_sec", "lr"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 3, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_curves.png", "config.yaml", "model_info"} <= artifacts
    curves = Path(client.download_artifacts(run.info.run_id, "training_curves.png", str(tmp_path)))
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_per_class_records(client, run.info.run_id, user_dataset, tmp_path)

    version = client.get_model_version("vit_micro_convstem_32", summary.registered_version)
    assert version.run_id == run.info.run_id
    assert version.tags["architecture"] == "VisionTransformer"
    assert float(version.tags["val_top1"]) == pytest.approx(summary.val_top1, abs=0.01)
    assert int(version.tags["params"]) > 0 and version.tags["dataset"] == str(user_dataset)
    # provenance: the same data, recipe and source can be recognised later
    from fovea.data import manifest_hash
    from fovea.models import count_macs

    assert version.tags["manifest_hash"] == manifest_hash(user_dataset) == run.data.tags["fovea.manifest_hash"]
    assert version.tags["recipe_hash"] == run.data.tags["fovea.recipe_hash"] and len(version.tags["recipe_hash"]) == 16
    assert version.tags["git_commit"] == run.data.tags["fovea.git_commit"] != ""
    macs = count_macs("vit_micro_convstem_32", (1, 3, 32, 32), num_classes=3, img_size=32)
    assert float(version.tags["gmacs"]) == pytest.approx(macs / 1e9, rel=1e-3)
    assert "val top-1" in version.description and version.tags["manifest_hash"] in version.description
    registry = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    for alias in ("challenger", "champion"):  # the model's first version: newest, and champion by the rule
        assert registry.get_model_version_by_alias("vit_micro_convstem_32", alias).version == version.version
    assert version.tags["promotion"].startswith("vit_micro_convstem_32 had no champion")
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pytorch.load_model(f"models:/vit_micro_convstem_32/{summary.registered_version}")
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 3)
    from fovea.sources import load_model

    recorded = load_model(f"models:/vit_micro_convstem_32/{summary.registered_version}", tracking_uri).inputs
    assert (recorded["hflip"], recorded["num_spatial_crops"]) == (0.5, 1)  # evaluation's multi-view defaults


def test_two_ddp_workers_match_one_and_score_the_val_set_once(user_dataset, tracking_uri, one_worker, tmp_path):
    """Two CPU workers split the data (each sees half), reach the same accuracy band as one, and evaluate the whole
    val split exactly once per epoch between them (EMA weights too)."""
    two = run_training(
        _config(
            user_dataset,
            tracking_uri,
            tmp_path,
            train={"name": "e2e-ddp2", "ema": True, "ema_decay": 0.9},
            scaling={"num_workers": 2, "cpus_per_worker": 0.5},
            track={"log_model": False},
        )
    )
    one = one_worker
    assert one.val_top1 >= 85.0 and two.val_top1 >= 85.0, (one, two)
    assert abs(one.val_top1 - two.val_top1) <= 10.0
    client = MlflowClient(tracking_uri)
    # the same number of samples per epoch in total: each of the two workers trained on its half
    splits = load_manifest(user_dataset)["splits"]
    for summary, workers in ((one, 1), (two, 2)):
        samples = client.get_metric_history(summary.mlflow_run_id, "train_samples")
        expected = (splits["train"]["count"] // workers // 16) * 16 * workers
        assert [int(m.value) for m in samples] == [expected] * 3
    assert two.registered_version is None  # track.log_model=false
    # Ray's equal split may drop at most one row per worker to keep the shards the same length
    scored = client.get_metric_history(two.mlflow_run_id, "val_samples")
    assert len(scored) == 3 and all(splits["val"]["count"] - 2 < m.value <= splits["val"]["count"] for m in scored)
    # per-class counts gathered from both workers: the confusion matrix covers the val rows scored
    assert check_per_class_records(client, two.mlflow_run_id, user_dataset, tmp_path)["epochs"] == 3
    ema_top1 = client.get_metric_history(two.mlflow_run_id, "val_top1_ema")
    assert len(ema_top1) == 3 and all(0.0 <= m.value <= 100.0 for m in ema_top1)
    assert np.isfinite(two.val_top5)


def test_streaming_yields_uint8_batches_in_a_new_order_each_epoch(user_dataset):
    from fovea.config import DataConfig
    from fovea.data.stream import build_image_datasets

    manifest = load_manifest(user_dataset)
    assert len(manifest["splits"]["train"]["shards"]) >= 3
    datasets = build_image_datasets(manifest, DataConfig(shuffle="files"), img_size=24, seed=3)
    orders = []
    for _ in range(2):  # two executions = two epochs
        labels = []
        for batch in datasets["train"].iter_torch_batches(batch_size=16):
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 24, 24)
            labels.extend(batch["label"].tolist())
        orders.append(labels)
    assert len(orders[0]) == manifest["splits"]["train"]["count"]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]

    def val_checksums() -> list[int]:  # row order across executions is not promised; the images are
        batches = datasets["val"].iter_torch_batches(batch_size=64)
        return sorted(int(image.long().sum()) for batch in batches for image in batch["image"])

    assert val_checksums() == val_checksums()  # eval is deterministic: resize + centre crop only
