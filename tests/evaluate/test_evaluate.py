"""``jobs/evaluate.py``: model sources (registry, checkpoint, model folder), scoring checked against an independent
computation, multi-view images and video, the MLflow run linked to the model version, and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import mlflow_store, prepare_colour_set, smoke_config
from mlflow.tracking import MlflowClient
from PIL import Image

from fovea.config import build_config
from fovea.data import ClipSpec, DecodeClips, DecodeImages, load_manifest, manifest_hash, prepare_videos
from fovea.data.clips import CLIP_COLUMNS
from fovea.data.demo_video import render_demo_video, write_mp4
from fovea.data.eval_views import DecodeImageViews, crop_offsets
from fovea.data.transforms import eval_resize_size
from fovea.evaluate.job import evaluation_main, run_evaluation
from fovea.models import create_model, save_model_dir
from fovea.track import ensure_experiment, log_final_model

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "jobs" / "configs" / "evaluate"
MODEL = "vit_micro_patch4_32"
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # not the model's default (ImageNet's): the recorded ones must win
CROP_PCT = 1.0  # recorded with the model; the config's default is 0.875
REGISTERED = "tiny-eval"


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: a tiny prepared image set, a briefly trained tiny ViT in the registry, as a checkpoint and as a folder
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_set(ray_local, tmp_path_factory) -> Path:
    """3 colour classes x 12 images of assorted sizes (mostly not square), half of each held out as val."""
    return prepare_colour_set(tmp_path_factory.mktemp("eval_images"), per_class=12, val_fraction=0.5, shard_rows=8)


def _rows(dataset: Path, split: str, columns: list[str]) -> dict[str, np.ndarray]:
    """A split's rows read straight from its Parquet shards (no Ray), as a numpy batch."""
    shards = load_manifest(dataset)["splits"][split]["shards"]
    table = pa.concat_tables([pq.read_table(shard, columns=columns) for shard in shards])
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in columns}


def _normalise(uint8: torch.Tensor) -> torch.Tensor:
    shape = (1, 3) + (1,) * (uint8.dim() - 2)
    return (uint8.float() / 255 - torch.tensor(MEAN).view(shape)) / torch.tensor(STD).view(shape)


@pytest.fixture(scope="module")
def model(image_set) -> torch.nn.Module:
    """``vit_micro_patch4_32`` after a few steps on the train split with every other red image labelled green: it
    gets some images right, not all (a confusion matrix with errors off the diagonal)."""
    torch.manual_seed(0)
    net = create_model(MODEL, num_classes=3, img_size=32)
    rows = _rows(image_set, "train", ["image", "label"])
    batch = DecodeImages(32, train=False, crop_pct=CROP_PCT)(rows)
    images, labels = _normalise(torch.from_numpy(batch["image"])), torch.from_numpy(batch["label"]).clone()
    labels[torch.nonzero(labels == 2).flatten()[::2]] = 1
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    net.train()
    for _ in range(6):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    return net.eval()


def _info(classes: list[str]) -> dict:
    return {
        "model_name": MODEL,
        "create_kwargs": {"num_classes": len(classes), "img_size": 32},
        "img_size": 32,
        "mean": MEAN,
        "std": STD,
        "classes": classes,
    }


@pytest.fixture(scope="module")
def registry(model, tmp_path_factory) -> dict:
    """The model registered as ``tiny-eval`` version 1 (alias champion) from a run that recorded crop_pct."""
    uri = mlflow_store(tmp_path_factory.mktemp("eval_mlflow"))
    client = MlflowClient(uri, registry_uri=uri)
    run = client.create_run(ensure_experiment(uri, "training"), run_name="train-tiny")
    client.log_param(run.info.run_id, "data.crop_pct", str(CROP_PCT))
    # trained with flips, recorded only in the run (a version registered before the metadata held the recipe)
    client.log_param(run.info.run_id, "data.hflip", "0.5")
    classes = ["blue", "green", "red"]
    info = _info(classes)
    version = log_final_model(
        uri,
        run.info.run_id,
        model,
        input_example=np.zeros((1, 3, 32, 32), dtype=np.float32),
        registered_model_name=REGISTERED,
        version_tags={"model_name": MODEL},
        classes=classes,
        metadata={key: info[key] for key in ("model_name", "create_kwargs", "img_size", "mean", "std")},
        alias="champion",
    )
    client.set_terminated(run.info.run_id)
    assert version == "1"
    return {"uri": uri, "run_id": run.info.run_id}


def _config(**sections) -> object:
    return smoke_config("evaluate", "evaluate", {"track": {"enabled": False}}, sections)


def _expected(model: torch.nn.Module, dataset: Path, *, crops: int = 1, flip: bool = False) -> dict:
    """Scores computed by hand: rows read with pyarrow, decoded one image at a time, logits averaged over views."""
    rows = _rows(dataset, "val", ["image", "label"])
    if crops == 1 and not flip:
        views = torch.from_numpy(DecodeImages(32, train=False, crop_pct=CROP_PCT)(rows)["image"])[:, None]
    else:
        views = torch.from_numpy(DecodeImageViews(32, crop_pct=CROP_PCT, num_crops=crops)(rows)["image"])
        if flip:
            views = torch.cat([views, views.flip(-1)], dim=1)
    labels = torch.from_numpy(rows["label"]).long()
    with torch.no_grad():
        logits = torch.stack([model(_normalise(sample)).mean(0) for sample in views])  # (N, classes)
    predicted = logits.argmax(1)
    confusion = np.zeros((3, 3), dtype=np.int64)
    for true, guess in zip(labels.tolist(), predicted.tolist(), strict=True):
        confusion[true, guess] += 1
    return {
        "confusion": confusion,
        "top1": 100.0 * float((predicted == labels).float().mean()),
        "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        "views": views.shape[1],
    }


# --------------------------------------------------------------------------------------------------------------------
# The job end to end (first: its driver joins this module's Ray instance)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_job_scores_a_registered_model_and_links_the_run_to_its_version(
    ray_local, image_set, registry, model, tmp_path
):
    uri = registry["uri"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    command = [
        sys.executable,
        str(ROOT / "jobs" / "evaluate.py"),
        "--preset",
        "smoke",
        f"eval.model={REGISTERED}@champion",  # the shorthand of models:/tiny-eval@champion
        f"data.path={image_set}",
        f"track.uri={uri}",
        "track.experiment=evaluations",
    ]
    started = time.perf_counter()
    job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "Traceback" not in job.stderr
    expected = _expected(model, image_set)
    assert f"single view    top-1 {expected['top1']:.2f}%" in job.stdout, job.stdout
    assert "-> tiny-eval version 1" in job.stdout
    print(f"jobs/evaluate.py --preset smoke: {seconds:.1f} s")

    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("evaluations").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name.startswith(f"eval-{REGISTERED}-")
    tags = run.data.tags
    assert tags["fovea.role"] == "eval"
    assert tags["fovea.model_uri"] == f"{REGISTERED}@champion"
    assert (tags["fovea.registered_model"], tags["fovea.model_version"]) == (REGISTERED, "1")
    assert tags["fovea.source_run_id"] == registry["run_id"]
    assert tags["fovea.dataset"] == str(image_set) and tags["fovea.manifest_hash"] == manifest_hash(image_set)
    assert tags["fovea.split"] == "val" and tags["fovea.views"] == "single+multi"
    metrics = run.data.metrics
    assert metrics["eval_top1"] == pytest.approx(expected["top1"])
    assert metrics["eval_loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert metrics["eval_count"] == 18 and metrics["eval_top5"] == 100.0
    assert metrics["eval_views"] == 2  # the training recipe's data.hflip=0.5: the centre crop and its flip
    flipped = _expected(model, image_set, flip=True)
    assert metrics["eval_mv_top1"] == pytest.approx(flipped["top1"])
    for index, name in enumerate(["blue", "green", "red"]):
        row = expected["confusion"][index]
        assert metrics[f"class_top1/{name}"] == pytest.approx(100.0 * row[index] / row.sum())

    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"per_class.csv", "confusion_matrix.png", "confusion_matrix.csv", "evaluation.json"} <= artifacts
    assert {"per_class_mv.csv", "confusion_matrix_mv.png"} <= artifacts
    folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    assert (folder / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = list(csv.DictReader(io.StringIO((folder / "per_class.csv").read_text())))
    assert [row["class"] for row in table] == ["blue", "green", "red"]
    for index, row in enumerate(table):
        assert int(row["count"]) == expected["confusion"][index].sum() == 6
        assert int(row["correct"]) == expected["confusion"][index, index]
    matrix = list(csv.reader(io.StringIO((folder / "confusion_matrix.csv").read_text())))
    assert np.array_equal(np.array([[int(v) for v in row[1:]] for row in matrix[1:]]), expected["confusion"])

    version = client.get_model_version(REGISTERED, "1")
    assert version.tags["last_eval_run_id"] == run.info.run_id
    assert version.tags["last_eval_top1"] == f"{expected['top1']:.2f}"
    assert version.tags["last_eval_dataset"] == str(image_set)
    # MLflow 3: the metrics are logged against the version's logged model too, and it is the run's input
    model_id = version.model_id or version.source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert {m.key for m in logged.metrics} >= {"eval_top1", "eval_mv_top1"}
    assert [m.model_id for m in client.get_run(run.info.run_id).inputs.model_inputs] == [model_id]


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, before Ray
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrong_classes_folder(model, tmp_path_factory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("wrong") / "model", model, _info(["blue", "green", "purple"]))


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.model=", "eval.model: which model?"),
        ("eval.model=models:/tiny-eval", "eval.model: 'models:/tiny-eval' is not models:/NAME/VERSION or"),
        ("eval.model=/no/such/checkpoint.pt", "eval.model: no such checkpoint file or model folder: /no/such"),
        ("eval.split=test", "eval.split: "),
        ("WRONG_CLASSES", "eval.model: "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(override, message, image_set, wrong_classes_folder, capsys):
    argv = ["--preset", "smoke", f"data.path={image_set}", "track.enabled=false", "eval.model=models:/x@champion"]
    argv.append(f"eval.model={wrong_classes_folder}" if override == "WRONG_CLASSES" else override)
    assert evaluation_main(CONFIGS, argv=argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"evaluate: config error: {message}"), lines
    if override == "eval.split=test":
        assert lines[0].endswith("has no 'test' split with data (splits with data: train, val)")
    if override == "WRONG_CLASSES":
        assert lines[0].endswith("the dataset lacks purple; the model lacks red")


# --------------------------------------------------------------------------------------------------------------------
# Scoring, the sources, views
# --------------------------------------------------------------------------------------------------------------------


def test_scores_match_an_independent_computation(ray_local, image_set, registry, model):
    result = run_evaluation(
        _config(
            eval={"model": f"models:/{REGISTERED}@champion", "views": "single"},
            data={"path": str(image_set)},
            track={"uri": registry["uri"]},
        )
    )
    expected = _expected(model, image_set)
    assert result.multi is None and result.single is not None
    assert result.model.version == "1" and result.crop_pct == CROP_PCT  # the training run's crop_pct won
    scores = result.single
    assert np.array_equal(scores.confusion, expected["confusion"])
    assert 0 < scores.correct < 18 and len(set(np.flatnonzero(scores.confusion.sum(0)))) >= 2  # not a trivial model
    assert scores.top1 == pytest.approx(expected["top1"]) and scores.count == 18
    assert scores.loss == pytest.approx(expected["loss"], rel=1e-4)
    for index, row in enumerate(scores.per_class()):
        assert row["count"] == scores.confusion[index].sum() == 6
        assert row["correct"] == scores.confusion[index, index]
        assert row["accuracy"] == pytest.approx(100.0 * row["correct"] / row["count"])
    assert sum(row["correct"] for row in scores.per_class()) == scores.correct
    assert result.metrics()["class_top1/red"] == pytest.approx(scores.per_class()[2]["accuracy"])


def test_checkpoint_and_folder_sources_give_the_registry_numbers(ray_local, image_set, model, tmp_path):
    # a training checkpoint as the worker writes it (its config records the input settings) ...
    trained = build_config(
        [{"model": {"name": MODEL, "img_size": 32}, "data": {"mean": MEAN, "std": STD, "crop_pct": 1}}]
    )
    state = {"model": model.state_dict(), "classes": ["blue", "green", "red"], "epoch": 4, "mlflow_run_id": "abc"}
    (tmp_path / "run" / "checkpoint_000003").mkdir(parents=True)
    torch.save(
        {**state, "config": json.dumps(trained.model_dump(mode="json"))},
        tmp_path / "run" / "checkpoint_000003" / "checkpoint.pt",
    )
    # ... a model folder as `fovea models download` writes it, and one whose classes (and head rows) come in another
    # order
    downloaded = {"registered_name": REGISTERED, "version": "1", "run_id": "r1", "crop_pct": CROP_PCT}
    folder = save_model_dir(tmp_path / "folder", model, {**_info(["blue", "green", "red"]), **downloaded})
    permuted = create_model(MODEL, num_classes=3, img_size=32)
    permuted.load_state_dict(model.state_dict())
    order = [2, 0, 1]  # red, blue, green
    with torch.no_grad():
        permuted.head.weight.copy_(model.head.weight[order])
        permuted.head.bias.copy_(model.head.bias[order])
    reordered = save_model_dir(tmp_path / "reordered", permuted, {**_info(["red", "blue", "green"]), "crop_pct": 1.0})

    expected = _expected(model, image_set)
    results = {}
    for name, source in (("checkpoint", tmp_path / "run"), ("folder", folder), ("reordered", reordered)):
        result = results[name] = run_evaluation(
            _config(eval={"model": str(source), "views": "single"}, data={"path": str(image_set)})
        )
        assert result.crop_pct == CROP_PCT
        assert np.array_equal(result.single.confusion, expected["confusion"]), source
        assert result.single.loss == pytest.approx(expected["loss"], rel=1e-4)
        assert result.single.classes == ["blue", "green", "red"]
    checkpoint = results["checkpoint"].model
    assert checkpoint.kind == "checkpoint" and checkpoint.source_run_id == "abc"
    assert checkpoint.location.endswith("checkpoint_000003/checkpoint.pt")  # the run folder's checkpoint
    assert results["folder"].model.kind == "folder" and not results["folder"].notes
    assert (results["folder"].model.registered_model, results["folder"].model.version) == (REGISTERED, "1")
    assert any("another order" in note for note in results["reordered"].notes)


def test_image_crops_spread_along_the_longer_side(tmp_path):
    assert crop_offsets(32, 48, 32, 3) == [(0, 0), (0, 8), (0, 16)]
    assert crop_offsets(50, 36, 32, 2) == [(0, 2), (18, 2)]
    assert crop_offsets(36, 36, 32, 1) == [(2, 2)]
    pixels = np.random.default_rng(0).integers(0, 256, (30, 70, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    batch = {"image": np.array([buffer.getvalue()], dtype=object), "label": np.array([1])}
    single = DecodeImages(32, train=False, crop_pct=0.875)(batch)["image"]  # (1, 3, 32, 32)
    centre = DecodeImageViews(32, crop_pct=0.875, num_crops=1)(batch)["image"]  # (1, 1, 3, 32, 32)
    assert np.array_equal(centre[:, 0], single)  # the one-crop view is the single view
    three = DecodeImageViews(32, crop_pct=0.875, num_crops=3)(batch)["image"]
    assert three.shape == (1, 3, 3, 32, 32) and np.array_equal(three[0, 1], single[0])
    side = eval_resize_size(32, 0.875)  # 36: the 30x70 image becomes 36x84
    assert not np.array_equal(three[0, 0], three[0, 2])
    assert three[0, 0].shape[-1] == 32 and side == 36


def test_multi_view_images_with_flips(ray_local, image_set, model):
    cfg = _config(
        eval={
            "model": str(
                save_model_dir(
                    image_set.parent / "mv_model", model, {**_info(["blue", "green", "red"]), "crop_pct": 1.0}
                )
            ),
            "views": "multi",
            "flip_views": True,
        },
        data={"path": str(image_set), "num_spatial_crops": 3},
    )
    result = run_evaluation(cfg)
    expected = _expected(model, image_set, crops=3, flip=True)
    assert result.single is None and result.multi.views == 6 and result.layout == "3 crops x 2 flips"
    assert result.metrics()["eval_views"] == 6 and result.metrics()["eval_mv_count"] == 18
    assert np.array_equal(result.multi.confusion, expected["confusion"])
    assert result.multi.loss == pytest.approx(expected["loss"], rel=1e-4)
    assert "over 6 views (3 crops x 2 flips)" in result.describe()


# --------------------------------------------------------------------------------------------------------------------
# Video: a tiny prepared set and a tiny 3D CNN, single centre clip and 2-clip multi-view
# --------------------------------------------------------------------------------------------------------------------


def test_multi_view_video(ray_local, tmp_path):
    raw = tmp_path / "raw"
    for index in range(8):
        action = ("grow", "shrink")[index % 2]
        (raw / action).mkdir(parents=True, exist_ok=True)
        write_mp4(
            raw / action / f"{index}.mp4",
            render_demo_video(action, np.random.default_rng(index), size=64, num_frames=12),
            fps=8,
        )
    prepare_videos(raw, tmp_path / "prepared", val_fraction=0.5, shard_rows=4)
    torch.manual_seed(1)
    net = create_model("c3d_micro", num_classes=2, img_size=32, num_frames=4).eval()
    info = {
        "model_name": "c3d_micro",
        "create_kwargs": {"num_classes": 2, "img_size": 32, "num_frames": 4},
        "img_size": 32,
        "num_frames": 4,
        "frame_interval": 2,
        "sampling": "dense",
        "mean": MEAN,
        "std": STD,
        "classes": ["grow", "shrink"],
    }
    folder = save_model_dir(tmp_path / "model", net, info)
    result = run_evaluation(
        _config(
            eval={"model": str(folder), "views": "both", "flip_views": False},
            data={"path": str(tmp_path / "prepared"), "num_temporal_clips": 2},
        )
    )
    assert result.video and result.multi.views == 2 and result.layout == "2 clips x 1 crop"

    rows = _rows(tmp_path / "prepared", "val", CLIP_COLUMNS)
    for scores, clips in ((result.single, 1), (result.multi, 2)):
        spec = ClipSpec(img_size=32, num_frames=4, frame_interval=2, crop_pct=0.875, num_temporal_clips=clips)
        views = torch.from_numpy(DecodeClips(spec, train=False)(rows)["video"])
        views = views if clips > 1 else views[:, None]  # (N, V, 3, T, H, W)
        with torch.no_grad():
            logits = torch.stack([net(_normalise(sample)).mean(0) for sample in views])
        labels = torch.from_numpy(rows["label"]).long()
        confusion = np.zeros((2, 2), dtype=np.int64)
        for true, guess in zip(labels.tolist(), logits.argmax(1).tolist(), strict=True):
            confusion[true, guess] += 1
        assert np.array_equal(scores.confusion, confusion), clips
        assert scores.loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-4)


@pytest.mark.parametrize(
    ("recipe", "overrides", "expected"),
    [
        ({"hflip": 0.0, "num_spatial_crops": 3}, {}, (False, 3)),  # trained without flips: no flip views
        ({"hflip": 0.5}, {}, (True, 1)),
        (
            {"hflip": 0.5, "num_spatial_crops": 3},
            {"eval": {"flip_views": False}, "data": {"num_spatial_crops": 1}},
            (False, 1),
        ),
        ({}, {}, (False, 1)),  # a model that records no recipe: the config's defaults
    ],
    ids=["no-flips", "flips", "explicit-options-win", "no-recipe"],
)
def test_multi_view_defaults_follow_the_training_recipe(model, tmp_path, recipe, overrides, expected):
    from fovea.evaluate.job import configure_for_model
    from fovea.sources import load_model

    folder = save_model_dir(tmp_path / "model", model, {**_info(["blue", "green", "red"]), **recipe})
    loaded = load_model(str(folder), "")
    sections = {"eval": {"model": str(folder), **overrides.get("eval", {})}, "data": overrides.get("data", {})}
    cfg = configure_for_model(_config(**sections), loaded)
    assert (cfg.eval.flip_views, cfg.data.num_spatial_crops) == expected


def test_a_video_models_recipe_sets_its_clips(tmp_path):
    from fovea.evaluate.job import configure_for_model
    from fovea.sources import load_model

    net = create_model("c3d_micro", num_classes=2, img_size=32, num_frames=4).eval()
    info = {
        "model_name": "c3d_micro", "create_kwargs": {"num_classes": 2, "img_size": 32, "num_frames": 4},
        "img_size": 32, "num_frames": 4, "mean": MEAN, "std": STD, "classes": ["grow", "shrink"],
        "hflip": 0.0, "num_temporal_clips": 2, "num_spatial_crops": 3,
    }  # fmt: skip
    loaded = load_model(str(save_model_dir(tmp_path / "model", net, info)), "")
    cfg = configure_for_model(_config(eval={"model": "x"}), loaded)
    assert (cfg.eval.flip_views, cfg.data.num_temporal_clips, cfg.data.num_spatial_crops) == (False, 2, 3)
    cfg = configure_for_model(_config(eval={"model": "x"}, data={"num_temporal_clips": 4}), loaded)
    assert cfg.data.num_temporal_clips == 4  # an explicit option still wins
