"""The video path end to end: prepared clips -> TorchTrainer -> single- and multi-view metrics -> MLflow registry;
the demo video set made once under FOVEA_HOME; video/image mismatches rejected before Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import mlflow_store
from mlflow.tracking import MlflowClient

from fovea.config import ConfigError, build_config
from fovea.data import ensure_demo_videos, load_manifest, prepare_videos
from fovea.data.demo_video import render_demo_video, write_mp4
from fovea.paths import fovea_home
from fovea.train.checks import check_before_start
from fovea.train.trainer import run_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clips(ray_local, tmp_path_factory) -> Path:
    """grow vs shrink, 16 videos each, prepared in small shards."""
    base = tmp_path_factory.mktemp("video_e2e")
    for action in ("grow", "shrink"):
        (base / "raw" / action).mkdir(parents=True)
        for index in range(16):
            frames = render_demo_video(action, np.random.default_rng([index, len(action)]), size=64, num_frames=16)
            write_mp4(base / "raw" / action / f"{index}.mp4", frames, fps=8)
    prepare_videos(base / "raw", base / "prepared", val_fraction=0.25, shard_rows=8)
    return base / "prepared"


def _config(**sections):
    base = {
        "job": "train_video_test",
        "model": {"name": "c3d_micro", "img_size": 32},
        "data": {
            "batch_size": 8,
            "decode_batch_size": 8,
            "num_frames": 4,
            "frame_interval": 3,
            "hflip": 0.0,
            "num_temporal_clips": 2,
            "num_spatial_crops": 3,
        },
        "optim": {"lr": 3e-3, "warmup_epochs": 0.5},
        "train": {"epochs": 2},
    }
    return build_config([base, sections])


def test_clips_train_and_report_both_evaluations(clips, tmp_path):
    tracking_uri = mlflow_store(tmp_path)
    cfg = _config(
        data={"path": str(clips)},
        train={"name": "video-e2e", "storage_path": str(tmp_path / "runs")},
        track={"uri": tracking_uri, "experiment": "video", "registered_model_name": "clip-net"},
    )
    summary = run_training(cfg)
    assert summary.epochs == 2 and summary.registered_version == "1"
    assert summary.multi_view is not None and summary.multi_view["val_views"] == 6
    assert 0.0 <= summary.multi_view["val_mv_top1"] <= 100.0

    client = MlflowClient(tracking_uri)
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.metrics["val_views"] == 6.0
    assert {"val_top1", "val_mv_top1", "val_mv_top5"} <= set(run.data.metrics)
    assert run.data.metrics["val_samples"] == load_manifest(clips)["splits"]["val"]["count"] == 8
    assert run.data.params["data.num_frames"] == "4"

    from fovea.sources import load_registered_model

    model, info = load_registered_model("models:/clip-net/1", tracking_uri)
    assert info["classes"] == ["grow", "shrink"] and info["num_frames"] == 4 and info["sampling"] == "dense"
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 4, 32, 32)).shape == (2, 2)
    version = client.get_model_version("clip-net", "1")
    assert "(N, 3, 4, 32, 32) normalised clips" in version.description


def test_demo_videos_are_made_once_under_fovea_home(ray_local):
    first = ensure_demo_videos(size=32, num_frames=8, train_per_class=2, val_per_class=1)
    assert first.is_relative_to(fovea_home()) and (first / "manifest.json").is_file()
    manifest = load_manifest(first)
    assert manifest["kind"] == "video" and len(manifest["classes"]) == 8
    assert manifest["splits"]["train"]["count"] == 16 and not manifest["rejected"]
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert ensure_demo_videos(size=32, num_frames=8, train_per_class=2, val_per_class=1) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp  # cached, not prepared again


def test_mismatches_are_rejected_before_ray(clips, tmp_path):
    with pytest.raises(ConfigError, match="is a video dataset, but vit_micro_patch4_32 takes images"):
        check_before_start(build_config([{"model": {"name": "vit_micro_patch4_32"}, "data": {"path": str(clips)}}]))
    with pytest.raises(ConfigError, match="data.hflip: the demo videos' classes include move_left"):
        check_before_start(_config(data={"hflip": 0.5}))
    with pytest.raises(ConfigError, match="distill.type: distillation is implemented for image models only"):
        check_before_start(_config(distill={"type": "soft", "teacher": "vit_micro_patch4_32"}))
