"""The video path end to end: prepared clips -> TorchTrainer -> single- and multi-view metrics -> MLflow registry;
the demo video set made once under FOVEA_HOME; video/image mismatches rejected before Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import check_per_class_records, mlflow_store
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
    check_per_class_records(client, run.info.run_id, clips, tmp_path)  # the gallery shows clips' middle frames

    from fovea.sources import load_registered_model

    model, info = load_registered_model("models:/clip-net/1", tracking_uri)
    assert info["classes"] == ["grow", "shrink"] and info["num_frames"] == 4 and info["sampling"] == "dense"
    assert (info["hflip"], info["num_temporal_clips"], info["num_spatial_crops"]) == (0.0, 2, 3)
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


def test_fine_tuning_starts_from_imported_published_weights(clips, tmp_path, capsys):
    """transformers' TimeSformer layout, imported once (`fovea weights import`), then fine-tuned from the registry:
    the run starts from the imported body with a fresh 2-class head and the weights' own normalisation."""
    transformers = pytest.importorskip("transformers")
    from fovea.cli import main
    from fovea.sources import load_registered_model

    torch.manual_seed(0)
    config = transformers.TimesformerConfig(
        image_size=32, patch_size=4, num_frames=8, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=384, num_labels=5, attention_type="divided_space_time",
    )  # fmt: skip
    transformers.TimesformerForVideoClassification(config).save_pretrained(tmp_path / "hf")
    uri = mlflow_store(tmp_path)
    imported = ["weights", "import", str(tmp_path / "hf"), "--model", "timesformer_micro_divided"]
    assert main([*imported, "--register", "tsf-k", "--tracking-uri", uri]) == 0, capsys.readouterr()
    base, base_info = load_registered_model("models:/tsf-k@base", uri)
    assert base_info["create_kwargs"]["num_classes"] == 5

    cfg = _config(
        model={"name": "timesformer_micro_divided", "img_size": 32, "checkpoint": "models:/tsf-k@base"},
        # decoded by TorchCodec in the training worker (data.video_decode=device: NVDEC on a GPU, the CPU here)
        data={"path": str(clips), "num_frames": 8, "frame_interval": 2, "num_temporal_clips": 1}
        | {"video_backend": "torchcodec", "video_decode": "device"},
        optim={"lr": 1e-6},  # the body stays where the import put it, so the test can see where it started
        train={"epochs": 1, "name": "from-import", "storage_path": str(tmp_path / "runs")},
        track={"uri": uri, "experiment": "fine-tune", "registered_model_name": "tsf-tuned"},
    )
    summary = run_training(cfg)
    assert summary.epochs == 1 and summary.registered_version == "1"
    tuned, info = load_registered_model("models:/tsf-tuned/1", uri)
    assert info["classes"] == ["grow", "shrink"] and info["mean"] == pytest.approx(base_info["mean"])
    start, end = base.state_dict(), tuned.state_dict()
    assert (start["blocks.0.temporal_attn.qkv.weight"] - end["blocks.0.temporal_attn.qkv.weight"]).abs().max() < 1e-3
    assert start["head.weight"].shape[0] == 5 and end["head.weight"].shape[0] == 2
