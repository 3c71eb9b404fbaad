"""The README's distillation flow on Ray, small: a CNN teacher is trained and registered with the champion alias,
then a distillation-token DeiT learns from ``models:/teacher@champion``."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import mlflow_store, prepare_colour_set, run_job, short_run, smoke_config
from mlflow.tracking import MlflowClient

from fovea.train.trainer import run_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory) -> Path:
    return prepare_colour_set(tmp_path_factory.mktemp("distill_data"), per_class=40, val_fraction=0.25, shard_rows=32)


def _config(job: str, preset_dir: str, dataset: Path, uri: str, storage: Path, **sections):
    return smoke_config(job, preset_dir, short_run(dataset, uri, storage, "distill-e2e"), sections)


@pytest.mark.long  # `pytest -m long` (minutes: not in the default run)
def test_cnn_teacher_from_the_registry_teaches_a_deit_student(dataset, tmp_path):
    uri = mlflow_store(tmp_path)
    teacher = run_training(
        _config(
            "train_vit",
            "vit",
            dataset,
            uri,
            tmp_path,
            model={"name": "resnet10t"},  # a timm CNN: no img_size argument, any input size
            train={"name": "teacher", "epochs": 3},
            track={"registered_model_name": "teacher"},  # its first version takes @champion (track.promote)
        )
    )
    assert teacher.registered_version == "1"
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("teacher", "champion").version) == "1"

    student = run_training(
        _config(
            "train_deit",
            "deit",
            dataset,
            uri,
            tmp_path,
            train={"name": "student", "epochs": 2},
            distill={"type": "hard", "alpha": 0.5, "teacher": "models:/teacher@champion"},
        )
    )
    assert student.epochs == 2 and student.val_top1 >= 60.0, student
    run = client.get_run(student.mlflow_run_id)
    assert run.data.params["distill.type"] == "hard"
    assert run.data.params["distill.teacher"] == "models:/teacher@champion"
    assert run.data.tags["fovea.teacher"] == "models:/teacher@champion (version 1)"
    # the teacher is scored once on the same val split: its registered weights and normalisation arrived intact
    teacher_score = client.get_metric_history(run.info.run_id, "teacher_val_top1")
    assert [m.step for m in teacher_score] == [0]
    assert teacher_score[0].value == pytest.approx(teacher.val_top1)
    for key in ("val_top1", "val_top1_cls", "val_top1_dist"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    version = client.get_model_version("deit_micro_distilled_convstem_32", student.registered_version)
    assert version.tags["val_top1"] == f"{student.val_top1:.2f}"


def test_a_missing_registry_teacher_is_a_one_line_error_before_training(tmp_path):
    uri = mlflow_store(tmp_path)
    job = run_job(
        "train_deit.py", "--preset", "smoke", "distill.type=soft", "distill.teacher=models:/nobody@champion",
        f"track.uri={uri}",
    )  # fmt: skip
    assert job.returncode == 2, job.stderr[-2000:]
    assert (
        job.stderr.strip()
        .splitlines()[-1]
        .startswith("train_deit: config error: distill.teacher: models:/nobody@champion not found in the registry")
    )
    assert "Started a local Ray instance" not in job.stdout + job.stderr  # it failed before Ray started
